package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The few fields of the snapshot API the scenarios read (decoded from
// kubectl's JSON; the test needs no snapshot client library).
type volumeSnapshot struct {
	metav1.ObjectMeta `json:"metadata"`
	Status            *struct {
		ReadyToUse                     *bool              `json:"readyToUse"`
		BoundVolumeSnapshotContentName *string            `json:"boundVolumeSnapshotContentName"`
		RestoreSize                    *resource.Quantity `json:"restoreSize"`
	} `json:"status"`
}

type volumeSnapshotContent struct {
	metav1.ObjectMeta `json:"metadata"`
	Status            *struct {
		SnapshotHandle *string `json:"snapshotHandle"`
		ReadyToUse     *bool   `json:"readyToUse"`
	} `json:"status"`
}

// runCmd runs a command and returns its standard output.
func runCmd(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
