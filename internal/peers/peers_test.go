package peers

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseStatic(t *testing.T) {
	for _, tc := range []struct {
		list, self string
		want       Static
		err        bool
	}{
		{list: "", want: nil},
		{list: "a=10.0.0.1:9811, b=[fd00::2]:9811", self: "c", want: Static{{"a", "10.0.0.1:9811"}, {"b", "[fd00::2]:9811"}}},
		{list: "a=10.0.0.1:9811,b=10.0.0.2:9811", self: "a", want: Static{{"b", "10.0.0.2:9811"}}},
		{list: "a", err: true},
		{list: "=10.0.0.1:1", err: true},
		{list: "a=10.0.0.1", err: true},
		{list: "a=1.1.1.1:1,a=1.1.1.2:1", err: true},
	} {
		got, err := ParseStatic(tc.list, tc.self)
		if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseStatic(%q, %q) = %v, %v; want %v (error %v)", tc.list, tc.self, got, err, tc.want, tc.err)
		}
	}
}

func TestFromPodsTakesOneRunningPodPerOtherNode(t *testing.T) {
	at := func(min int) metav1.Time { return metav1.NewTime(time.Date(2026, 12, 7, 10, min, 0, 0, time.UTC)) }
	pod := func(node, ip string, phase corev1.PodPhase, created metav1.Time, deleting bool) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: created}, Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: phase, PodIP: ip}}
		if deleting {
			p.DeletionTimestamp = &created
		}
		return p
	}
	pods := []corev1.Pod{
		pod("self", "10.0.0.9", corev1.PodRunning, at(1), false),
		pod("b", "10.0.0.2", corev1.PodRunning, at(1), false),
		pod("b", "10.0.0.3", corev1.PodRunning, at(5), false), // the newer of a rolling update
		pod("a", "10.0.0.1", corev1.PodRunning, at(1), false),
		pod("c", "10.0.0.4", corev1.PodPending, at(1), false),
		pod("d", "", corev1.PodRunning, at(1), false),
		pod("e", "10.0.0.5", corev1.PodRunning, at(1), true),
		pod("", "10.0.0.6", corev1.PodRunning, at(1), false),
	}
	got := fromPods(pods, 9811, "self")
	// c, d and e may hold what is asked for, and cannot say now.
	want := []Peer{{"a", "10.0.0.1:9811"}, {"b", "10.0.0.3:9811"}, {"c", ""}, {"d", ""}, {"e", ""}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("peers = %v, want %v", got, want)
	}
}
