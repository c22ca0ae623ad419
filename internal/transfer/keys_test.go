package transfer

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestLoadKeyring(t *testing.T) {
	k32 := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("a", 32)))
	k32raw := base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("b", 32)))
	k31 := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("c", 31)))
	tests := []struct {
		name    string
		text    *string // nil: no file
		wantIDs []string
		wantErr string
	}{
		{name: "two keys and comments", text: ptr("# keys\n\nnew " + k32 + "\n  # old one\nold " + k32raw + "\n"), wantIDs: []string{"new", "old"}},
		{name: "missing file", wantErr: "does not exist"},
		{name: "empty", text: ptr("# nothing\n"), wantErr: "no keys"},
		{name: "short key", text: ptr("a " + k31 + "\n"), wantErr: "has 31 bytes, want at least 32"},
		{name: "duplicate id", text: ptr("a " + k32 + "\nb " + k32 + "\na " + k32raw + "\n"), wantErr: `line 3: key id "a" listed twice`},
		{name: "bad base64", text: ptr("a " + k32[:10] + "!!" + k32[12:] + "\n"), wantErr: `line 1: key "a" is not valid base64`},
		{name: "one field", text: ptr(k32 + "\n"), wantErr: "line 1: 1 fields, want 2"},
		{name: "three fields", text: ptr("a " + k32 + " x\n"), wantErr: "3 fields"},
		{name: "non-ASCII id", text: ptr("clé " + k32 + "\n"), wantErr: "only printable ASCII"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "keys")
			if tt.text != nil {
				if err := os.WriteFile(p, []byte(*tt.text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			kr, err := LoadKeyring(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadKeyring: %v, want an error with %q", err, tt.wantErr)
				}
				// Errors never show a secret.
				for _, s := range []string{k32, k32raw, k31, k32[12:]} {
					if strings.Contains(err.Error(), s) {
						t.Fatalf("error shows key material: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ids, err := kr.IDs()
			if err != nil || !reflect.DeepEqual(ids, tt.wantIDs) {
				t.Fatalf("IDs = %v, %v; want %v", ids, err, tt.wantIDs)
			}
		})
	}
}

// A Secret volume updates by swapping the ..data symlink; the keyring sees
// it on the next use, and fails closed on a broken file until it is fixed.
func TestKeyringFollowsSecretUpdate(t *testing.T) {
	dir := t.TempDir()
	a, b := newKey(t, "a"), newKey(t, "b")
	mkData := func(name string, text string) {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "keys"), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mkData("..v1", keyFileText(a))
	if err := os.Symlink("..data/keys", filepath.Join(dir, "keys")); err != nil {
		t.Fatal(err)
	}
	kr, err := LoadKeyring(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		data    string
		text    string
		want    []string
		wantErr string
	}{
		{data: "..v2", text: keyFileText(a, b), want: []string{"a", "b"}},
		{data: "..v3", text: "b not-base64\n", wantErr: "not valid base64"},
		{data: "..v4", text: keyFileText(b), want: []string{"b"}},
	}
	for _, s := range steps {
		mkData(s.data, s.text)
		ids, err := kr.IDs()
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("after %s: IDs = %v, %v; want error %q", s.data, ids, err, s.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(ids, s.want) {
			t.Fatalf("after %s: IDs = %v, %v; want %v", s.data, ids, err, s.want)
		}
	}
}

func ptr(s string) *string { return &s }
