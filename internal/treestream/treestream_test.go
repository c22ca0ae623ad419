package treestream

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// acl encodes a POSIX ACL xattr value (version 2, entries sorted by tag
// then id): USER_OBJ rwx, USER uid r-x, GROUP_OBJ r-x, MASK r-x, OTHER ---.
func acl(uid uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, ^uint32(0)}, {0x02, 5, uid}, {0x04, 5, ^uint32(0)}, {0x10, 5, ^uint32(0)}, {0x20, 0, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// fileCap encodes a file capability (VFS_CAP_REVISION_2: cap_net_raw
// permitted and effective), which chown and writes clear.
func fileCap() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x02000000|1) // revision 2, effective
	b = binary.LittleEndian.AppendUint32(b, 1<<13)           // permitted: CAP_NET_RAW
	b = binary.LittleEndian.AppendUint32(b, 0)               // inheritable
	return binary.LittleEndian.AppendUint64(b, 0)            // the high words
}

// writeFullTree adds to the sample tree every kind of entry copytree
// keeps that the sample lacks: special modes, FIFOs, sockets, device
// nodes, a hard-linked FIFO, ACLs and a default ACL, xattrs on a symlink
// and a FIFO, owners of symlinks, a file of several data chunks with holes
// between them, fixed times. It needs root.
func writeFullTree(t *testing.T, root string) {
	t.Helper()
	testutil.WriteSampleTree(t, root, 50)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(rel string) string { return filepath.Join(root, rel) }
	must(os.MkdirAll(p("a/deep/er"), 0o755))
	must(os.Mkdir(p("sticky"), 0o755))
	must(os.Mkdir(p("readonly"), 0o755))
	must(os.WriteFile(p("readonly/f"), []byte("in a read-only directory"), 0o444))
	must(os.Link(p("readonly/f"), p("a/linked-into-readonly")))
	must(os.WriteFile(p("setuid"), []byte("#!/bin/true\n"), 0o755))
	must(os.WriteFile(p("empty"), nil, 0o644))
	must(os.WriteFile(p("acl"), []byte("with an ACL"), 0o640))
	must(unix.Mkfifo(p("pipe"), 0o600))
	must(os.Link(p("pipe"), p("a/pipe-link")))
	must(unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(p("blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200))))
	must(unix.Mknod(p("sock"), unix.S_IFSOCK|0o755, 0))
	must(os.Symlink("/etc/passwd", p("abs")))
	must(os.Symlink("nowhere", p("dangling")))
	// Several chunks of data with holes between them, and a trailing hole.
	f, err := os.Create(p("chunks"))
	must(err)
	data := make([]byte, 3*ChunkSize+12345)
	rand.Read(data)
	_, err = f.WriteAt(data, 4<<20)
	must(err)
	_, err = f.WriteAt(data[:100], 20<<20)
	must(err)
	must(f.Truncate(40 << 20))
	must(f.Close())

	must(os.Lchown(p("a"), 1000, 1000))
	must(os.Lchown(p("abs"), 1003, 1004))
	must(unix.Setxattr(p("acl"), "system.posix_acl_access", acl(1000), 0))
	must(unix.Setxattr(p("a"), "system.posix_acl_access", acl(1001), 0))
	must(unix.Setxattr(p("a"), "system.posix_acl_default", acl(1002), 0))
	// unix.Chmod: os.Chmod takes an os.FileMode, which drops raw 0o7000 bits.
	must(unix.Chmod(p("sticky"), 0o1777))
	must(unix.Chmod(p("setuid"), 0o4755))
	must(unix.Chmod(p("a"), 0o2750))
	must(unix.Chmod(p("readonly"), 0o555))
	must(unix.Setxattr(p("setuid"), "security.capability", fileCap(), 0))
	must(unix.Setxattr(p("chunks"), "user.color", []byte("blue"), 0))
	must(unix.Setxattr(p("chunks"), "trusted.big", bytes.Repeat([]byte{7}, 4000), 0))
	must(unix.Lsetxattr(p("abs"), "trusted.link", []byte("of a symlink"), 0))
	must(unix.Lsetxattr(p("pipe"), "trusted.fifo", []byte("of a fifo"), 0))

	when := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	var dirs []string
	must(filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		when = when.Add(time.Second)
		ts := unix.NsecToTimespec(when.UnixNano())
		return unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}))
	for i := len(dirs) - 1; i >= 0; i-- {
		when = when.Add(time.Minute)
		must(os.Chtimes(dirs[i], when, when))
	}
}

func send(t testing.TB, src string) ([]byte, Stats) {
	t.Helper()
	root, err := beneath.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var buf bytes.Buffer
	st, err := Send(context.Background(), root, &buf, SendOptions{})
	if err != nil {
		t.Fatalf("send %s: %v", src, err)
	}
	return buf.Bytes(), st
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestRoundTrip(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name  string
		build func(t *testing.T, root string)
		want  Stats // zero: not checked
		check func(t *testing.T, dst string, st Stats)
	}{
		{name: "empty", build: func(*testing.T, string) {}, want: Stats{Dirs: 1}},
		{
			name:  "sample",
			build: func(t *testing.T, root string) { testutil.WriteSampleTree(t, root, 100) },
			want:  Stats{Files: 103, Dirs: 4, Symlinks: 1, HardLinks: 1, Bytes: 256<<10 + 4096 + 100*512 + 32<<20, DataBytes: 256<<10 + 4096 + 100*512 + 4096},
		},
		{
			name:  "every kind of entry",
			build: writeFullTree,
			check: func(t *testing.T, dst string, st Stats) {
				for rel, want := range map[string]uint32{"setuid": 0o4755, "sticky": 0o1777, "a": 0o2750, "readonly": 0o555} {
					var s unix.Stat_t
					if err := unix.Lstat(filepath.Join(dst, rel), &s); err != nil || s.Mode&0o7777 != want {
						t.Errorf("%s: mode %o, want %o (%v)", rel, s.Mode&0o7777, want, err)
					}
				}
				if v, err := unix.Getxattr(filepath.Join(dst, "setuid"), "security.capability", make([]byte, 64)); err != nil || v != len(fileCap()) {
					t.Errorf("file capability of setuid: %d bytes, %v", v, err)
				}
				// Holes stay holes: 3 MiB of data in a 40 MiB file, 4 KiB in 32 MiB.
				if a := allocated(t, filepath.Join(dst, "chunks")); a > 4<<20 {
					t.Errorf("chunks allocates %d bytes", a)
				}
				if a := allocated(t, filepath.Join(dst, "sparse")); a > 1<<20 {
					t.Errorf("sparse allocates %d bytes", a)
				}
				if st.DataBytes > 8<<20 || st.Bytes < 72<<20 {
					t.Errorf("stats %+v: holes sent as data", st)
				}
				if st.HardLinks != 3 || st.Specials != 4 || st.Symlinks != 3 {
					t.Errorf("stats %+v", st)
				}
				var a, b unix.Stat_t
				if unix.Lstat(filepath.Join(dst, "pipe"), &a) != nil || unix.Lstat(filepath.Join(dst, "a", "pipe-link"), &b) != nil || a.Ino != b.Ino || a.Nlink != 2 {
					t.Errorf("the FIFO's hard link is not one: %+v %+v", a, b)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			if err := os.Mkdir(src, 0o755); err != nil {
				t.Fatal(err)
			}
			tc.build(t, src)
			want := testutil.TreeManifest(t, src)
			stream, sent := send(t, src)
			got, err := Receive(context.Background(), bytes.NewReader(stream), dst, ReceiveOptions{})
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if got != sent {
				t.Errorf("received %+v, sent %+v", got, sent)
			}
			if tc.want != (Stats{}) && got != tc.want {
				t.Errorf("stats %+v, want %+v", got, tc.want)
			}
			if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, dst)); diff != "" {
				t.Fatalf("received tree differs from the source:\n%s", diff)
			}
			if tc.check != nil {
				tc.check(t, dst, got)
			}
			if again := testutil.TreeManifest(t, src); testutil.DiffManifests(want, again) != "" {
				t.Fatalf("source changed:\n%s", testutil.DiffManifests(want, again))
			}
		})
	}
}

// smallStream is the stream of a small tree of every kind of entry, with
// a file of two data chunks.
func smallStream(t testing.TB) []byte { return streamOf(t, ChunkSize+1000) }

// streamOf is smallStream with a big file of size bytes.
func streamOf(t testing.TB, size int) []byte {
	t.Helper()
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d", "e"), 0o750))
	data := make([]byte, size)
	rand.Read(data)
	f, err := os.Create(filepath.Join(src, "d", "big"))
	must(err)
	_, err = f.WriteAt(data, 1<<20)
	must(err)
	must(f.Close())
	must(os.WriteFile(filepath.Join(src, "d", "e", "small"), []byte("small"), 0o600))
	must(os.Link(filepath.Join(src, "d", "e", "small"), filepath.Join(src, "small-link")))
	must(os.Symlink("../outside", filepath.Join(src, "d", "sym")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o644))
	must(unix.Setxattr(filepath.Join(src, "d"), "user.x", []byte("y"), 0))
	b, _ := send(t, src)
	return b
}

// receiveInto receives stream into a fresh dst beside a directory with a
// canary, and fails the test if anything changed outside dst.
func receiveInto(t testing.TB, stream []byte) (string, error) {
	t.Helper()
	return receiveIn(t, t.TempDir(), stream)
}

// receiveIn is receiveInto in parent, an empty directory.
func receiveIn(t testing.TB, parent string, stream []byte) (string, error) {
	t.Helper()
	outside := filepath.Join(parent, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "canary"), []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := listing(t, parent, "dst")
	dst := filepath.Join(parent, "dst")
	_, err := Receive(context.Background(), bytes.NewReader(stream), dst, ReceiveOptions{})
	if after := listing(t, parent, "dst"); testutil.DiffManifests(before, after) != "" {
		t.Fatalf("receive changed what is outside its destination:\n%s", testutil.DiffManifests(before, after))
	}
	return dst, err
}

// listing lists everything under dir except the entry skip, with what
// a write would change.
func listing(t testing.TB, dir, skip string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == filepath.Join(dir, skip) {
			return filepath.SkipDir
		}
		if p == dir {
			return nil // changed by making dst; what is in it is listed
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %o %d %d %d.%d", p, st.Mode, st.Size, st.Nlink, st.Mtim.Sec, st.Mtim.Nsec))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A stream cut anywhere (a sender killed mid-transfer) is ErrTruncated,
// never a success.
func TestTruncatedStream(t *testing.T) {
	t.Parallel()
	stream := smallStream(t)
	var cuts []int
	for i := 0; i < 200 && i < len(stream); i++ {
		cuts = append(cuts, i) // the header and the first records, byte by byte
	}
	for i := 200; i < len(stream)-200; i += 99_991 {
		cuts = append(cuts, i) // inside the data chunks
	}
	for i := max(200, len(stream)-200); i < len(stream); i++ {
		cuts = append(cuts, i) // the last records and the trailer, byte by byte
	}
	for _, cut := range cuts {
		_, err := receiveInto(t, stream[:cut])
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("stream cut at %d of %d: %v, want ErrTruncated", cut, len(stream), err)
		}
	}
	// A connection reset mid-stream is a truncation too.
	reset := errors.New("connection reset by peer")
	for _, cut := range []int{0, 100, len(stream) / 2, len(stream) - 1} {
		_, err := Receive(context.Background(), io.MultiReader(bytes.NewReader(stream[:cut]), iotest.ErrReader(reset)),
			filepath.Join(t.TempDir(), "dst"), ReceiveOptions{})
		if !errors.Is(err, ErrTruncated) || !errors.Is(err, reset) {
			t.Fatalf("stream failing at %d: %v, want ErrTruncated wrapping the read error", cut, err)
		}
	}
	if _, err := receiveInto(t, stream); err != nil {
		t.Fatalf("whole stream: %v", err)
	}
}

// A flipped bit anywhere is refused: by a check where it breaks the
// framing, by the trailer's hash otherwise.
func TestFlippedByte(t *testing.T) {
	t.Parallel()
	stream := smallStream(t)
	var offsets []int
	for i := 0; i < len(stream); i++ {
		if i < 200 || i >= len(stream)-200 || i%3 == 0 && i < 400 || i%65_521 == 0 {
			offsets = append(offsets, i)
		}
	}
	kinds := map[string]int{}
	for _, off := range offsets {
		bad := bytes.Clone(stream)
		bad[off] ^= 0x10
		_, err := receiveInto(t, bad)
		switch {
		case err == nil:
			t.Fatalf("stream with byte %d of %d flipped received", off, len(stream))
		case errors.Is(err, ErrCorrupt):
			kinds["corrupt"]++
		case errors.Is(err, ErrTruncated): // a length made longer
			kinds["truncated"]++
		case errors.Is(err, ErrVersion) && off < headerLen:
			kinds["version"]++
		default:
			t.Fatalf("stream with byte %d flipped: %v, want ErrCorrupt", off, err)
		}
	}
	t.Logf("%d flips refused: %v", len(offsets), kinds)
}

// builder writes streams by hand, for what Send never writes.
type builder struct{ b []byte }

func newBuilder() *builder {
	b := &builder{b: []byte(magic)}
	b.b = binary.BigEndian.AppendUint16(b.b, version)
	return b
}

func (b *builder) rec(typ byte, payload ...[]byte) *builder {
	p := bytes.Join(payload, nil)
	start := len(b.b)
	b.b = append(b.b, typ)
	b.b = binary.BigEndian.AppendUint32(b.b, uint32(len(p)))
	b.b = append(b.b, p...)
	b.b = binary.BigEndian.AppendUint32(b.b, crc32.Checksum(b.b[start:], castagnoli))
	return b
}

func name16(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

func mt(mode uint32) []byte { return meta{mode: mode}.put(nil) }

func (b *builder) dir(name string) *builder {
	return b.rec(recDir, name16(name), mt(unix.S_IFDIR|0o755)).rec(recEnd)
}

func (b *builder) file(name string, data string) *builder {
	b.rec(recFile, name16(name), mt(unix.S_IFREG|0o644), []byte{1})
	if data != "" {
		b.rec(recData, binary.BigEndian.AppendUint64(nil, 0), []byte(data))
	}
	return b.rec(recSize, binary.BigEndian.AppendUint64(nil, uint64(len(data)))).rec(recEnd)
}

func (b *builder) leave() *builder { return b.rec(recLeave) }

// trailer ends the stream with counts and a valid hash.
func (b *builder) trailer(s Stats) []byte {
	b.rec(recTrailer, s.put(nil))
	sum := sha256Sum(b.b)
	return append(b.b, sum...)
}

func TestHostileStream(t *testing.T) {
	t.Parallel()
	testutil.RequireRoot(t)
	huge := func(typ byte) []byte {
		return binary.BigEndian.AppendUint32(append(newBuilder().dir("").b, typ), 0xFFFFFFF0)
	}
	tests := []struct {
		name   string
		stream []byte
		ok     bool // the control: a valid hand-made stream
	}{
		{"valid, with a device node", newBuilder().dir("").file("f", "hello").dir("d").
			rec(recSpecial, name16("null"), mt(unix.S_IFCHR|0o666), binary.BigEndian.AppendUint64(nil, unix.Mkdev(1, 3)), []byte{0}).rec(recEnd).
			rec(recLink, name16("g"), binary.BigEndian.AppendUint64(nil, 0)).leave().leave().
			trailer(Stats{Files: 1, Dirs: 2, Specials: 1, HardLinks: 1, Bytes: 5, DataBytes: 5}), true},
		{"dir ..", newBuilder().dir("").dir("..").leave().leave().trailer(Stats{Dirs: 2}), false},
		{"file ..", newBuilder().dir("").file("..", "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"file a/b", newBuilder().dir("").file("a/b", "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"file .", newBuilder().dir("").file(".", "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"file with NUL", newBuilder().dir("").file("a\x00b", "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"empty name", newBuilder().dir("").file("", "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"name too long", newBuilder().dir("").file(strings.Repeat("n", 256), "x").leave().trailer(Stats{Dirs: 1, Files: 1}), false},
		{"symlink ../x", newBuilder().dir("").rec(recSymlink, name16("../x"), mt(unix.S_IFLNK|0o777), name16("/tmp")).rec(recEnd).leave().trailer(Stats{Dirs: 1, Symlinks: 1}), false},
		{"root with a name", newBuilder().dir("x").leave().trailer(Stats{Dirs: 1}), false},
		{"no root", newBuilder().file("f", "x").trailer(Stats{Files: 1}), false},
		{"hard link to nothing", newBuilder().dir("").rec(recLink, name16("l"), binary.BigEndian.AppendUint64(nil, 0)).leave().trailer(Stats{Dirs: 1, HardLinks: 1}), false},
		{"hard link to a later file", newBuilder().dir("").rec(recLink, name16("l"), binary.BigEndian.AppendUint64(nil, 0)).file("f", "x").leave().trailer(Stats{Dirs: 1, Files: 1, HardLinks: 1, Bytes: 1, DataBytes: 1}), false},
		{"hard link to an unknown id", newBuilder().dir("").file("f", "x").rec(recLink, name16("l"), binary.BigEndian.AppendUint64(nil, 1<<40)).leave().trailer(Stats{Dirs: 1, Files: 1, HardLinks: 1, Bytes: 1, DataBytes: 1}), false},
		{"a name twice", newBuilder().dir("").file("f", "x").file("f", "y").leave().trailer(Stats{Dirs: 1, Files: 2, Bytes: 2, DataBytes: 2}), false},
		{"a file where a symlink is", newBuilder().dir("").rec(recSymlink, name16("s"), mt(unix.S_IFLNK|0o777), name16("../outside/canary")).rec(recEnd).
			file("s", "overwritten").leave().trailer(Stats{Dirs: 1, Files: 1, Symlinks: 1, Bytes: 11, DataBytes: 11}), false},
		{"a directory where a symlink is", newBuilder().dir("").rec(recSymlink, name16("s"), mt(unix.S_IFLNK|0o777), name16("../outside")).rec(recEnd).
			dir("s").file("new", "x").leave().leave().trailer(Stats{Dirs: 2, Files: 1, Symlinks: 1, Bytes: 1, DataBytes: 1}), false},
		{"a hard link over a symlink", newBuilder().dir("").file("f", "x").rec(recSymlink, name16("s"), mt(unix.S_IFLNK|0o777), name16("../outside/new")).rec(recEnd).
			rec(recLink, name16("s"), binary.BigEndian.AppendUint64(nil, 0)).leave().trailer(Stats{Dirs: 1, Files: 1, Symlinks: 1, HardLinks: 1, Bytes: 1, DataBytes: 1}), false},
		{"file of type directory", newBuilder().dir("").rec(recFile, name16("f"), mt(unix.S_IFDIR|0o755), []byte{0}).leave().trailer(Stats{Dirs: 1}), false},
		{"special of type file", newBuilder().dir("").rec(recSpecial, name16("f"), mt(unix.S_IFREG|0o755), make([]byte, 8), []byte{0}).rec(recEnd).leave().trailer(Stats{Dirs: 1, Specials: 1}), false},
		{"huge entry record", huge(recFile), false},
		{"huge data chunk", append(newBuilder().dir("").rec(recFile, name16("f"), mt(unix.S_IFREG|0o644), []byte{0}).b, recData, 0xFF, 0xFF, 0xFF, 0xF0), false},
		{"huge xattr", append(newBuilder().rec(recDir, name16(""), mt(unix.S_IFDIR|0o755)).b, recXattr, 0x10, 0, 0, 0), false},
		{"xattr outside the namespaces", newBuilder().rec(recDir, name16(""), mt(unix.S_IFDIR|0o755)).rec(recXattr, []byte{3}, []byte("abc"), []byte("v")).rec(recEnd).leave().trailer(Stats{Dirs: 1}), false},
		{"data beyond any file", newBuilder().dir("").rec(recFile, name16("f"), mt(unix.S_IFREG|0o644), []byte{0}).rec(recData, binary.BigEndian.AppendUint64(nil, 1<<63), []byte("x")).b, false},
		{"unknown record", newBuilder().dir("").rec('?', []byte("x")).leave().trailer(Stats{Dirs: 1}), false},
		{"record after the root", newBuilder().dir("").leave().file("f", "x").trailer(Stats{Dirs: 1}), false},
		{"counts that lie", newBuilder().dir("").file("f", "x").leave().trailer(Stats{Dirs: 1}), false},
		{"too deep", func() []byte {
			b := newBuilder().dir("")
			for i := 0; i <= beneath.MaxDepth; i++ {
				b.dir("d")
			}
			return b.b
		}(), false},
		{"no trailer", newBuilder().dir("").file("f", "x").leave().b, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst, err := receiveInto(t, tc.stream)
			if tc.ok {
				if err != nil {
					t.Fatalf("valid stream refused: %v", err)
				}
				if data, err := os.ReadFile(filepath.Join(dst, "d", "g")); err != nil || string(data) != "hello" {
					t.Fatalf("hard link: %q, %v", data, err)
				}
				return
			}
			if err == nil {
				t.Fatal("hostile stream received")
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("hostile stream: %v, want ErrCorrupt or ErrTruncated", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// A tenant swapping a directory of its volume with a symlink to outside it
// while the volume is sent never gets anything from outside into the
// stream, nor anything the volume never held.
func TestSendUnderSwapAttack(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "volume")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	attack := testutil.NewSwapAttack(t, src, filepath.Join(dir, "outside"))
	before := attack.OutsideState(t)
	attack.Start()
	defer attack.Stop(t)
	const copies = 30
	files, links := 0, 0
	for i := 0; i < copies; i++ {
		stream, _ := send(t, src)
		if bytes.Contains(stream, attack.Canary) {
			t.Fatalf("send %d: the canary from outside the volume is in the stream", i)
		}
		dst := filepath.Join(dir, fmt.Sprint("copy", i))
		if _, err := Receive(context.Background(), bytes.NewReader(stream), dst, ReceiveOptions{}); err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		f, l, err := attack.CheckCopy(dst)
		if err != nil {
			t.Fatalf("copy %d (%d swaps): %v", i, attack.Swaps(), err)
		}
		files, links = files+f, links+l
		if err := os.RemoveAll(dst); err != nil {
			t.Fatal(err)
		}
	}
	swaps := attack.Stop(t)
	if diff := testutil.OutsideChanged(before, attack.OutsideState(t)); diff != "" {
		t.Fatalf("outside changed:\n%s", diff)
	}
	if files == 0 || links == 0 || swaps < copies {
		t.Fatalf("%d sends held %d files and %d symlinks during %d swaps: the attack did not overlap them", copies, files, links, swaps)
	}
	t.Logf("%d sends during %d swaps held %d files and %d symlinks of the volume; none from outside", copies, swaps, files, links)
}

func TestSendRefusesMountInside(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	src := filepath.Join(dir, "src")
	inside := filepath.Join(src, "m")
	if err := os.MkdirAll(inside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(t.TempDir(), inside, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(inside, 0)
	root, err := beneath.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var buf bytes.Buffer
	if _, err := Send(context.Background(), root, &buf, SendOptions{}); !errors.Is(err, beneath.ErrMountInside) {
		t.Fatalf("send over a mount: %v, want ErrMountInside", err)
	}
	// What was written is no stream a receiver accepts.
	if _, err := receiveInto(t, buf.Bytes()); !errors.Is(err, ErrTruncated) {
		t.Fatalf("receive of a failed send: %v, want ErrTruncated", err)
	}
}

// A file that grows and shrinks while it is sent keeps the framing: the
// stream verifies and the copy has one of the sizes the file had.
func TestSendChangingFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(src, "log")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			size := int64(i%4) << 21 // 0, 2, 4, 6 MiB
			if err := f.Truncate(size); err != nil {
				t.Error(err)
				return
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte("y"), 1<<20), size); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for i := 0; i < 20; i++ {
		stream, sent := send(t, src)
		dst := filepath.Join(dir, fmt.Sprint("dst", i))
		got, err := Receive(context.Background(), bytes.NewReader(stream), dst, ReceiveOptions{})
		if err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if got != sent {
			t.Fatalf("received %+v, sent %+v", got, sent)
		}
		fi, err := os.Stat(filepath.Join(dst, "log"))
		if err == nil && (fi.Size() > 8<<20 || fi.Size() != got.Bytes) {
			t.Fatalf("copy of %d bytes, stats %+v", fi.Size(), got)
		}
		os.RemoveAll(dst)
	}
}

func TestCancel(t *testing.T) {
	src := t.TempDir()
	testutil.WriteSampleTree(t, src, 10)
	root, err := beneath.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	t.Run("send before it starts", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var buf bytes.Buffer
		if _, err := Send(ctx, root, &buf, SendOptions{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled send: %v", err)
		}
	})
	t.Run("send blocked writing", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pr.Close()
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { _, err := Send(ctx, root, pw, SendOptions{}); errc <- err }()
		time.Sleep(50 * time.Millisecond) // blocked: nobody reads
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled send: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("send blocked on its writer did not stop when cancelled")
		}
	})
	t.Run("receive blocked reading", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := Receive(ctx, pr, filepath.Join(t.TempDir(), "dst"), ReceiveOptions{})
			errc <- err
		}()
		full := smallStream(t)
		if _, err := pw.Write(full[:len(full)/2]); err != nil { // then nothing more
			t.Fatal(err)
		}
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled receive: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("receive blocked on its reader did not stop when cancelled")
		}
	})
	t.Run("through a pipe, both ends", func(t *testing.T) {
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		sendErr := make(chan error, 1)
		go func() {
			_, err := Send(ctx, root, pw, SendOptions{})
			pw.CloseWithError(err)
			sendErr <- err
		}()
		cancel()
		_, err := Receive(ctx, pr, filepath.Join(t.TempDir(), "dst"), ReceiveOptions{})
		if err == nil {
			t.Fatal("cancelled receive succeeded")
		}
		if err := <-sendErr; err == nil {
			// The send may have finished before the cancel reached it;
			// the receive must still have failed.
			t.Log("send finished before the cancel")
		}
	})
}

func TestReceiveExistingDestination(t *testing.T) {
	dst := t.TempDir()
	if _, err := Receive(context.Background(), bytes.NewReader(smallStream(t)), dst, ReceiveOptions{}); err == nil {
		t.Fatal("receive into an existing directory accepted")
	}
}

func TestNice(t *testing.T) {
	src := t.TempDir()
	testutil.WriteSampleTree(t, src, 10)
	root, err := beneath.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	before, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sent, err := Send(context.Background(), root, &buf, SendOptions{Nice: 10})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Receive(context.Background(), &buf, filepath.Join(t.TempDir(), "dst"), ReceiveOptions{Nice: 10})
	if err != nil || got != sent {
		t.Fatalf("niced round trip: %+v, %+v, %v", got, sent, err)
	}
	if after, _ := unix.Getpriority(unix.PRIO_PROCESS, 0); after != before {
		t.Fatalf("priority of the process changed from %d to %d", before, after)
	}
}

func FuzzReceive(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root: streams hold owners and device nodes")
	}
	f.Add(streamOf(f, 3000)) // small inputs: the fuzzer mutates and minimizes them
	f.Add(streamOf(f, 0))
	f.Add(newBuilder().dir("").file("f", "hello").leave().trailer(Stats{Dirs: 1, Files: 1, Bytes: 5, DataBytes: 5}))
	src := f.TempDir()
	testutil.WriteSampleTree(f, src, 3)
	sample, _ := send(f, src)
	f.Add(sample)
	f.Fuzz(func(t *testing.T, stream []byte) {
		parent, err := os.MkdirTemp("", "fuzz-receive-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		dst, err := receiveIn(t, parent, stream)
		if err == nil {
			// Only a stream with a valid trailer may be received.
			if len(stream) < 32 || !bytes.Equal(sha256Sum(stream[:len(stream)-32]), stream[len(stream)-32:]) {
				t.Fatalf("a stream without a valid trailer was received into %s", dst)
			}
		}
	})
}

// A stream with more data than MaxDataBytes allows fails before the write
// that would pass it; one within it is received, holes not counted.
func TestReceiveBoundsItsData(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 3<<20)
	if err := os.WriteFile(filepath.Join(src, "a"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("y"), 1<<30) // 1 GiB apparent, one block of data
	f.Close()
	stream, st := send(t, src)
	for _, tc := range []struct {
		max  int64
		fail bool
	}{
		{0, false},
		{st.DataBytes, false},
		{st.DataBytes - 1, true},
		{1 << 20, true},
	} {
		dst := filepath.Join(t.TempDir(), "dst")
		got, err := Receive(context.Background(), bytes.NewReader(stream), dst, ReceiveOptions{MaxDataBytes: tc.max})
		if tc.fail != errors.Is(err, ErrTooLarge) || (!tc.fail && err != nil) {
			t.Errorf("MaxDataBytes %d of a %d-byte stream: %v", tc.max, st.DataBytes, err)
		}
		if tc.fail && got.DataBytes > tc.max {
			t.Errorf("MaxDataBytes %d: wrote %d bytes before failing", tc.max, got.DataBytes)
		}
	}
}
