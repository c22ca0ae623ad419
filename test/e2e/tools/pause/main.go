// Command pause is the pod sandbox's process in the end-to-end test's
// cluster (containerd's sandbox image, which no registry serves here): it
// holds the pod's namespaces and exits on SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
