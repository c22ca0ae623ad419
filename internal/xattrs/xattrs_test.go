package xattrs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEachAndGet(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("v"), 3000) // past the first buffer
	for name, val := range map[string][]byte{"user.a": []byte("1"), "user.b": []byte("2"), "user.big": big} {
		if err := unix.Setxattr(p, name, val, 0); err != nil {
			t.Skipf("no user xattrs here: %v", err)
		}
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, src := range []Source{Fd(int(f.Fd())), Path(p)} {
		got := map[string]string{}
		err := Each(src, func(n string) bool { return n != "user.b" }, func(n string, v []byte) error {
			got[n] = string(v)
			return nil
		})
		if err != nil || len(got) != 2 || got["user.a"] != "1" || got["user.big"] != string(big) {
			t.Errorf("Each kept %d attributes (%v), want user.a and user.big", len(got), err)
		}
		if v, err := Get(src, "user.b"); err != nil || string(v) != "2" {
			t.Errorf("Get user.b = %q, %v", v, err)
		}
		if _, err := Get(src, "user.none"); !errors.Is(err, unix.ENODATA) {
			t.Errorf("Get of a missing attribute: %v, want ENODATA", err)
		}
	}
}
