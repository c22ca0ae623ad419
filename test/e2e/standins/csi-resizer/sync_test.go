package main

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func claimWith(request, allocated string, state v1.ClaimResourceStatus, conds ...v1.PersistentVolumeClaimConditionType) *v1.PersistentVolumeClaim {
	pvc := &v1.PersistentVolumeClaim{}
	pvc.Spec.Resources.Requests = v1.ResourceList{storage: resource.MustParse(request)}
	if allocated != "" {
		pvc.Status.AllocatedResources = v1.ResourceList{storage: resource.MustParse(allocated)}
	}
	if state != "" {
		pvc.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{storage: state}
	}
	for _, c := range conds {
		pvc.Status.Conditions = append(pvc.Status.Conditions, v1.PersistentVolumeClaimCondition{Type: c, Status: v1.ConditionTrue})
	}
	return pvc
}

func volumeOf(size string) *v1.PersistentVolume {
	pv := &v1.PersistentVolume{}
	pv.Spec.Capacity = v1.ResourceList{storage: resource.MustParse(size)}
	return pv
}

// The cases of external-resizer's expandAndRecover that a driver meets.
func TestTargetSize(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     expansionMode
		pvc      *v1.PersistentVolumeClaim
		pv       *v1.PersistentVolume
		wantSize string
		wantAct  bool
	}{
		{"new request", nodeOnlyExpansion, claimWith("2Gi", "", ""), volumeOf("1Gi"), "2Gi", true},
		{"node still expanding to an earlier size", nodeOnlyExpansion, claimWith("3Gi", "2Gi", statusNodePending), volumeOf("2Gi"), "2Gi", false},
		{"node pending, PV already raised", nodeOnlyExpansion, claimWith("2Gi", "2Gi", statusNodePending), volumeOf("2Gi"), "2Gi", false},
		{"controller resize in progress resumes its size", controllerExpansion, claimWith("3Gi", "2Gi", statusControllerProgress), volumeOf("1Gi"), "2Gi", true},
		{"PV raised, status not recorded: resume", controllerExpansion, claimWith("2Gi", "2Gi", ""), volumeOf("2Gi"), "2Gi", true},
		{"PV raised, waiting for the node (old API server)", nodeOnlyExpansion, claimWith("2Gi", "", "", v1.PersistentVolumeClaimFileSystemResizePending), volumeOf("2Gi"), "2Gi", false},
		{"node infeasible, node-only: retry the request", nodeOnlyExpansion, claimWith("2Gi", "4Gi", statusNodeInfeasible), volumeOf("4Gi"), "2Gi", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &controller{mode: tc.mode}
			size, act := c.targetSize(tc.pvc, tc.pv)
			if act != tc.wantAct || (act && size.Cmp(resource.MustParse(tc.wantSize)) != 0) {
				t.Errorf("targetSize = %s, %v; want %s, %v", size.String(), act, tc.wantSize, tc.wantAct)
			}
		})
	}
}

func TestMergeResizeConditions(t *testing.T) {
	bound := v1.PersistentVolumeClaimConditionType("Other")
	old := []v1.PersistentVolumeClaimCondition{{Type: bound}, {Type: v1.PersistentVolumeClaimResizing}, {Type: v1.PersistentVolumeClaimControllerResizeError}}
	added := []v1.PersistentVolumeClaimCondition{{Type: v1.PersistentVolumeClaimFileSystemResizePending}}
	types := func(cs []v1.PersistentVolumeClaimCondition) []v1.PersistentVolumeClaimConditionType {
		var out []v1.PersistentVolumeClaimConditionType
		for _, c := range cs {
			out = append(out, c.Type)
		}
		return out
	}
	if got := types(mergeResizeConditions(old, added, true)); len(got) != 4 || got[0] != bound || got[3] != v1.PersistentVolumeClaimFileSystemResizePending {
		t.Errorf("keepOld: %v", got)
	}
	if got := types(mergeResizeConditions(old, added, false)); len(got) != 2 || got[0] != bound || got[1] != v1.PersistentVolumeClaimFileSystemResizePending {
		t.Errorf("replace: %v", got)
	}
	if got := types(mergeResizeConditions(old, nil, false)); len(got) != 1 || got[0] != bound {
		t.Errorf("clear: %v", got)
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("hostpath-csi.github.io"); got != "hostpath-csi-github-io" {
		t.Errorf("sanitize = %q", got)
	}
}
