package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// moduleName is how modprobe names a module: its file name without the
// .ko suffix (and any compression suffix), with '-' read as '_'.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// moduleIndex is what modules.dep and modules.builtin say.
type moduleIndex struct {
	path    map[string]string   // module name -> path relative to the modules directory
	deps    map[string][]string // path -> the paths it depends on
	builtin map[string]bool     // names compiled into the kernel
}

func loadModuleIndex(dir string) (*moduleIndex, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	defer f.Close()
	idx, err := parseModulesDep(f)
	if err != nil {
		return nil, err
	}
	if b, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		defer b.Close()
		s := bufio.NewScanner(b)
		for s.Scan() {
			if line := strings.TrimSpace(s.Text()); line != "" {
				idx.builtin[moduleName(line)] = true
			}
		}
		if err := s.Err(); err != nil {
			return nil, fmt.Errorf("modules.builtin: %w", err)
		}
	}
	return idx, nil
}

// parseModulesDep reads lines of "kernel/a/b.ko: kernel/c.ko kernel/d.ko".
func parseModulesDep(r io.Reader) (*moduleIndex, error) {
	idx := &moduleIndex{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("modules.dep line %d: no module before ':': %q", n, line)
		}
		idx.path[moduleName(mod)] = mod
		idx.deps[mod] = strings.Fields(deps)
	}
	return idx, s.Err()
}

// resolve returns the module files to load for the named modules, each
// after everything it depends on, each once. Modules built into the
// kernel are left out; a name the kernel has neither built in nor as a
// module is an error.
func (idx *moduleIndex) resolve(names []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), p)
		}
		state[p] = 1
		deps, ok := idx.deps[p]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) is not in modules.dep", p, strings.Join(chain, " -> "))
		}
		for _, d := range deps {
			if err := visit(d, append(chain, moduleName(p))); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, p)
		return nil
	}
	for _, name := range names {
		n := moduleName(name)
		if idx.builtin[n] {
			continue
		}
		p, ok := idx.path[n]
		if !ok {
			return nil, fmt.Errorf("kernel has no module %q (neither in modules.dep nor built in)", name)
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
