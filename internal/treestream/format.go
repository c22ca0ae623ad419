// Package treestream turns a directory tree into a byte stream (Send) and a
// stream back into a tree (Receive), so that a volume or snapshot held on
// one node can be rebuilt on another over any io.Writer / io.Reader pair.
//
// It keeps exactly what package copytree keeps: regular files' contents
// with their holes (only data segments, found with SEEK_DATA/SEEK_HOLE,
// are sent; the receiver writes them with pwrite and sets the size with
// ftruncate), modes with setuid/setgid/sticky, owners, access and
// modification times, symlinks, hard links (of regular files and special
// files), extended attributes (POSIX ACLs and directories' default ACLs
// included), FIFOs, sockets and device nodes. Directories get their final
// mode, owner and times after everything inside them, and stay
// owner-writable until then.
//
// # Format
//
// A stream starts with an 8-byte magic and a 2-byte version, then framed
// records: a type byte, a 4-byte big-endian payload length, the payload.
// Each record ends with a CRC-32C of its type, length and payload, so a
// corrupted record is refused before anything is made of it. Every entry
// is a header record (directory, file, symlink, special file,
// hard link) followed, except for a hard link, by its data chunks (files:
// offset and bytes, at most 1 MiB each, then the final size), its extended
// attributes one per record, and an end record. A directory's entries
// follow its own end record, and a leave record (carrying its default ACL)
// closes it. The trailer counts what was sent and ends with a SHA-256 of
// every byte of the stream before the hash itself. Files are streamed as
// they are read: a file that grows or shrinks meanwhile is sent as read, at
// most up to the size it had when it was opened.
//
// # Threat model
//
// The source is a tenant's volume, changed by its pod while it is sent, as
// root. Send reads it only through directory descriptors (package beneath):
// it never follows a symlink, leaves out entries that vanish or change type
// while they are read, and refuses a mount inside the source
// (beneath.ErrMountInside).
//
// The stream is hostile to Receive: a bug or a compromised peer may send
// anything. Receive checks every name (one path component, not . or ..,
// at most 255 bytes), bounds every length before allocating for it (record
// headers, names, symlink targets, xattrs, data chunks), bounds the depth,
// makes hard links only to files received earlier in the same stream,
// holds at most 256 MiB of what it must keep until the end (directories'
// metadata, hard links' names), and
// creates and writes everything through descriptors of directories it made
// under dst, without following symlinks: nothing outside dst is ever
// created or written. A stream that fails its checks is ErrCorrupt, one that
// ends before its trailer is ErrTruncated; only a stream whose trailer
// verifies is a success. Device nodes are created as the stream says, as
// copytree copies them: the tree is a volume's, whose own pods see it.
package treestream

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"golang.org/x/sys/unix"
)

var (
	// ErrCorrupt: the stream is not one that Send writes (a flipped byte, a
	// framing error, a hostile peer); the received tree must be discarded.
	ErrCorrupt = errors.New("tree stream is corrupt")
	// ErrTruncated: the stream ended before its trailer (a sender killed
	// mid-transfer); the received tree is incomplete.
	ErrTruncated = errors.New("tree stream ended before its trailer")
	// ErrVersion: the stream was written in a format version this build
	// does not read.
	ErrVersion = errors.New("tree stream version not supported")
)

// Stats says what a stream held.
type Stats struct {
	Files, Dirs, Symlinks, HardLinks, Specials int64
	// Bytes is the logical size of the regular files.
	Bytes int64
	// DataBytes is the file data actually sent, holes excluded.
	DataBytes int64
}

const (
	magic   = "HPCSITS\x00"
	version = 1

	headerLen = len(magic) + 2
	recHdrLen = 5 // type, uint32 length
	crcLen    = 4 // CRC-32C after the payload

	// ChunkSize is the largest data chunk of a stream.
	ChunkSize = 1 << 20

	maxName   = 255  // NAME_MAX
	maxTarget = 4095 // PATH_MAX less the NUL
	maxXattr  = 1 << 16
	metaLen   = 36
	// maxEntryRec bounds an entry header: name, metadata and the largest
	// extra part (a symlink's target).
	maxEntryRec = 2 + maxName + metaLen + 2 + maxTarget
	trailerLen  = 7*8 + 32
)

// Record types.
const (
	recDir     byte = 'd' // name, meta
	recFile    byte = 'f' // name, meta, linkable flag
	recSymlink byte = 'l' // name, meta, target
	recSpecial byte = 'n' // name, meta, rdev, linkable flag
	recLink    byte = 'h' // name, id of an earlier linkable entry
	recData    byte = 'D' // offset, bytes
	recSize    byte = 'T' // final size of the file
	recXattr   byte = 'X' // name length (1 byte), name, value
	recEnd     byte = 'E' // end of the current entry
	recLeave   byte = 'U' // end of the current directory; its default ACL
	recTrailer byte = 'Z' // counts, SHA-256
)

// meta is what an entry's header says of its inode.
type meta struct {
	mode, uid, gid uint32
	atime, mtime   unix.Timespec
}

func metaOf(st *unix.Statx_t) meta {
	return meta{
		mode: uint32(st.Mode), uid: st.Uid, gid: st.Gid,
		atime: unix.Timespec{Sec: st.Atime.Sec, Nsec: int64(st.Atime.Nsec)},
		mtime: unix.Timespec{Sec: st.Mtime.Sec, Nsec: int64(st.Mtime.Nsec)},
	}
}

func (m meta) put(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.mode)
	b = binary.BigEndian.AppendUint32(b, m.uid)
	b = binary.BigEndian.AppendUint32(b, m.gid)
	b = binary.BigEndian.AppendUint64(b, uint64(m.atime.Sec))
	b = binary.BigEndian.AppendUint32(b, uint32(m.atime.Nsec))
	b = binary.BigEndian.AppendUint64(b, uint64(m.mtime.Sec))
	b = binary.BigEndian.AppendUint32(b, uint32(m.mtime.Nsec))
	return b
}

// dec reads a record's payload, remembering the first shortfall.
type dec struct {
	b   []byte
	bad bool
}

func (d *dec) take(n int) []byte {
	if d.bad || n > len(d.b) {
		d.bad = true
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *dec) str16(limit int) (string, error) {
	n := int(d.u16())
	if n > limit {
		return "", corrupt("a string of %d bytes, more than %d", n, limit)
	}
	return string(d.take(n)), nil
}

func (d *dec) meta() (meta, error) {
	m := meta{mode: d.u32(), uid: d.u32(), gid: d.u32()}
	m.atime.Sec, m.atime.Nsec = int64(d.u64()), int64(d.u32())
	m.mtime.Sec, m.mtime.Nsec = int64(d.u64()), int64(d.u32())
	if m.mode&^uint32(unix.S_IFMT|0o7777) != 0 {
		return m, corrupt("mode %o", m.mode)
	}
	if m.atime.Nsec >= 1e9 || m.mtime.Nsec >= 1e9 {
		return m, corrupt("nanoseconds out of range")
	}
	return m, nil
}

// done checks that the payload was exactly what was read of it.
func (d *dec) done(what byte) error {
	if d.bad {
		return corrupt("record %q is short", what)
	}
	if len(d.b) != 0 {
		return corrupt("record %q has %d bytes too many", what, len(d.b))
	}
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// checkName refuses anything but one path component.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > maxName {
		return corrupt("entry name %q", name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return corrupt("entry name %q", name)
		}
	}
	return nil
}

func (s Stats) put(b []byte) []byte {
	for _, v := range []int64{s.Files, s.Dirs, s.Symlinks, s.HardLinks, s.Specials, s.Bytes, s.DataBytes} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return b
}

func (d *dec) stats() Stats {
	var s Stats
	for _, p := range []*int64{&s.Files, &s.Dirs, &s.Symlinks, &s.HardLinks, &s.Specials, &s.Bytes, &s.DataBytes} {
		*p = int64(d.u64())
	}
	return s
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
