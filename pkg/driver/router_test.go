package driver

import (
	"context"
	"go/token"
	"reflect"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A controller or node call that a family serves and the router does not
// hand over would be answered UNIMPLEMENTED by the Driver's embedded
// default, and no compiler says so. Each method is called with an empty
// request on a receiver with nothing behind it: a method that answers
// anything but UNIMPLEMENTED, or reaches for the state it lacks (a panic,
// recovered), is served.
func TestRouterHandsOverEveryCallTheFamiliesServe(t *testing.T) {
	served := func(recv any, name string) (ok bool) {
		m := reflect.ValueOf(recv).MethodByName(name)
		defer func() {
			if recover() != nil {
				ok = true
			}
		}()
		out := m.Call([]reflect.Value{reflect.ValueOf(context.Background()), reflect.New(m.Type().In(1).Elem())})
		err, _ := out[1].Interface().(error)
		return status.Code(err) != codes.Unimplemented
	}
	families := map[string]any{"hostpath": &hostpathDriver{}, "nfs": &nfsDriver{}}
	n := 0
	for _, service := range []reflect.Type{reflect.TypeFor[csi.ControllerServer](), reflect.TypeFor[csi.NodeServer]()} {
		for i := range service.NumMethod() {
			name := service.Method(i).Name
			if !token.IsExported(name) {
				continue
			}
			for family, recv := range families {
				if !served(recv, name) {
					continue
				}
				n++
				if !served(&Driver{}, name) {
					t.Errorf("the %s family serves %s, which the Driver answers UNIMPLEMENTED", family, name)
				}
			}
		}
	}
	if n < 30 { // 19 calls of hostpath's, 18 of NFS's
		t.Fatalf("only %d calls found served by a family; the check cannot tell served calls from the others", n)
	}
}
