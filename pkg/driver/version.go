package driver

import "runtime/debug"

// version is set at build time:
//
//	go build -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=v1.2.3"
var version string

// Version is the driver's version. It is never empty: without ldflags (go
// test, go run) it falls back to the module version Go recorded, and to
// "devel" when there is none.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
