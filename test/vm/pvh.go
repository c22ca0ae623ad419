package vm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Under software emulation a guest decompressing its own kernel (Debian's
// is xz-compressed, 8 MiB to 66 MiB) spends most of a boot doing it: about
// 8 s of 16-20 s on a busy 2-core machine here. qemu can instead boot the
// uncompressed ELF kernel directly through its PVH entry point
// (CONFIG_PVH, which Debian enables), so the cache keeps that ELF beside the
// package's bzImage, extracted once with the host's xz.

const vmlinuxName = "vmlinux-pvh"

// ensurePVH extracts the uncompressed kernel of k into its directory unless
// it is there; it sets k.PVH when a usable one exists. The caller holds
// the cache lock. Failing to extract is not an error: Start boots the
// bzImage instead.
func ensurePVH(k *Kernel) {
	dst := filepath.Join(filepath.Dir(filepath.Dir(k.Image)), vmlinuxName)
	if hasPVHNote(dst) == nil {
		k.PVH = dst
		return
	}
	if err := extractVmlinux(k.Image, dst); err == nil {
		k.PVH = dst
	}
}

// extractVmlinux decompresses a bzImage's payload (xz) into dst.
func extractVmlinux(bzImage, dst string) error {
	img, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	payload, err := bzPayload(img)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")) {
		return errors.New("bzImage payload is not xz-compressed")
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	cmd := exec.Command(xz, "-dc", "--single-stream")
	cmd.Stdin, cmd.Stdout = bytes.NewReader(payload), out
	err = cmd.Run()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("xz -d: %w", err)
	}
	if err := hasPVHNote(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// bzPayload returns the compressed kernel inside a bzImage, located by the
// boot protocol's setup header (Documentation/arch/x86/boot.rst): the
// protected-mode code starts after setup_sects+1 sectors, and
// payload_offset/payload_length locate the payload within it.
func bzPayload(img []byte) ([]byte, error) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS setup header)")
	}
	if version := binary.LittleEndian.Uint16(img[0x206:]); version < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields", version)
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects + 1) * 512
	off := start + int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if off < 0 || n <= 0 || off+n > len(img) {
		return nil, fmt.Errorf("payload %d+%d outside the %d-byte image", off, n, len(img))
	}
	return img[off : off+n], nil
}

// hasPVHNote checks that an ELF kernel has the Xen PVH entry note that
// qemu needs to boot it directly.
func hasPVHNote(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const xenElfnotePhys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return err
		}
		for len(data) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(data[0:]))
			descsz := int(binary.LittleEndian.Uint32(data[4:]))
			typ := binary.LittleEndian.Uint32(data[8:])
			name := data[12:min(len(data), 12+namesz)]
			if typ == xenElfnotePhys32Entry && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) {
				return nil
			}
			next := 12 + align4(namesz) + align4(descsz)
			if next > len(data) {
				break
			}
			data = data[next:]
		}
	}
	return fmt.Errorf("%s has no PVH entry note", path)
}

func align4(n int) int { return (n + 3) &^ 3 }
