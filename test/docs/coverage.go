package docs

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

// Repo is what the coverage rules check commands against.
type Repo struct {
	Root        string
	MakeTargets map[string]bool // the Makefile's rules
	AptPackages map[string]bool // what .ci/run installs (its need lines)
}

var makeRule = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.-]*(?:\s+[A-Za-z0-9][A-Za-z0-9_.-]*)*)\s*::?(?:[^=]|$)`)

// LoadRepo reads the Makefile and .ci/run of the checkout at root.
func LoadRepo(root string) (*Repo, error) {
	r := &Repo{Root: root, MakeTargets: map[string]bool{}, AptPackages: map[string]bool{}}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return nil, fmt.Errorf("read the Makefile: %w", err)
	}
	for _, l := range strings.Split(string(mk), "\n") {
		if m := makeRule.FindStringSubmatch(l); m != nil {
			for _, t := range strings.Fields(m[1]) {
				r.MakeTargets[t] = true
			}
		}
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci/run"))
	if err != nil {
		return nil, fmt.Errorf("read .ci/run: %w", err)
	}
	for _, l := range strings.Split(string(ci), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "need" {
			for _, p := range f[1:] {
				r.AptPackages[p] = true
			}
		}
	}
	if len(r.MakeTargets) == 0 || len(r.AptPackages) == 0 {
		return nil, fmt.Errorf("found %d make targets and %d packages in .ci/run's need lines: the parsers no longer fit those files",
			len(r.MakeTargets), len(r.AptPackages))
	}
	return r, nil
}

// DocFile is a Markdown file the coverage check reads.
type DocFile struct {
	Name string // as reported, relative to the repository: docs/x.md
	Doc  markdown.Doc
	// Run: TestTranscripts runs its console blocks, and `make e2e` its e2e
	// blocks (docs/*.md). Otherwise (README.md) its commands must be
	// accounted for by the other rules.
	Run bool
}

// Uncovered is a command the docs show that no test runs.
type Uncovered struct {
	File    string
	Line    int
	Command string
	Why     string
}

func (u Uncovered) String() string {
	if u.Command == "" {
		return fmt.Sprintf("%s:%d: %s", u.File, u.Line, u.Why)
	}
	return fmt.Sprintf("%s:%d: %s: %s", u.File, u.Line, u.Command, u.Why)
}

// Coverage lists the commands of files that nothing runs, and the errors
// in their doctest format.
func Coverage(r *Repo, files []DocFile) []Uncovered {
	var out []Uncovered
	type pending struct {
		file string
		line markdown.Line
	}
	var check []pending
	run := map[string]bool{} // commands the transcripts run, as canonCommand has them
	runBlocks := map[string]bool{}
	var copies []pending // console blocks of files not run (README.md): each one of runBlocks
	for _, f := range files {
		for _, b := range f.Doc.Blocks {
			d, err := ParseDirective(b)
			if err != nil {
				out = append(out, Uncovered{File: f.Name, Line: b.Line - 1, Why: err.Error()})
				continue
			}
			switch b.Info {
			case "console":
				tr, err := ParseTranscript(b)
				if err != nil {
					out = append(out, Uncovered{File: f.Name, Line: b.Line, Why: err.Error()})
					continue
				}
				switch {
				case f.Run && d.Skip == "":
					runBlocks[strings.Join(b.Lines, "\n")] = true
				case !f.Run:
					copies = append(copies, pending{f.Name, markdown.Line{N: b.Line, Text: strings.Join(b.Lines, "\n")}})
				}
				for _, c := range tr.Commands {
					if f.Run && d.Skip == "" {
						run[canonCommand(c.Text)] = true
					} else {
						check = append(check, pending{f.Name, markdown.Line{N: c.Line, Text: c.Text}})
					}
				}
			case "sh", "bash":
				if phase, ok := markdown.E2EPhase(b); ok {
					if !f.Run {
						out = append(out, Uncovered{File: f.Name, Line: b.Line - 1,
							Why: "make e2e runs the e2e blocks of docs/*.md only"})
						continue
					}
					for _, l := range markdown.ShellLines(b.Lines, b.Line+1) {
						if phase == markdown.E2EDryRun {
							// Checked by the API server, not run: the line
							// must be one a server-side dry run can take, and
							// it covers no other block's command.
							if err := markdown.DryRunnable(l.Text); err != nil {
								out = append(out, Uncovered{File: f.Name, Line: l.N, Why: err.Error()})
							}
							continue
						}
						// make e2e runs it as written: the same command
						// elsewhere (README's quick deploy) is covered.
						run[canonCommand(l.Text)] = true
					}
					continue
				}
				for _, l := range markdown.ShellLines(b.Lines, b.Line+1) {
					check = append(check, pending{f.Name, l})
				}
			case "", "text":
				if !f.Run {
					continue
				}
				for i, l := range b.Lines {
					if strings.HasPrefix(l, "$ ") {
						out = append(out, Uncovered{File: f.Name, Line: b.Line + 1 + i, Command: strings.TrimPrefix(l, "$ "),
							Why: "a command in a block without the console info string, which nothing runs: label it ```console"})
					}
				}
			case "yaml", "json":
			default:
				if f.Run {
					out = append(out, Uncovered{File: f.Name, Line: b.Line,
						Why: fmt.Sprintf("info string %q, which the docs tests do not know, so nothing checks the block: write console (a transcript), sh or bash (commands), yaml, json, text or none", b.Info)})
				}
			}
		}
		for _, l := range f.Doc.Prose {
			if cmd, ok := strings.CutPrefix(strings.TrimSpace(l.Text), "$ "); ok {
				check = append(check, pending{f.Name, markdown.Line{N: l.N, Text: cmd}})
			}
		}
	}
	for _, p := range copies {
		if !runBlocks[p.line.Text] {
			out = append(out, Uncovered{File: p.file, Line: p.line.N,
				Why: "a console block that is not the same lines as any console block of docs/*.md that TestTranscripts runs, so nothing checks its output: copy it from there"})
		}
	}
	for _, p := range check {
		if run[canonCommand(p.line.Text)] {
			continue
		}
		if err := r.CheckCommand(p.line.Text); err != nil {
			out = append(out, Uncovered{File: p.file, Line: p.line.N, Command: oneLine(p.line.Text), Why: err.Error()})
		}
	}
	order := map[string]int{}
	for i, f := range files {
		order[f.Name] = i
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return order[out[i].File] < order[out[j].File]
		}
		return out[i].Line < out[j].Line
	})
	return out
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\\\n", " ")), " ")
}

// canonCommand is a command without its comment, continuations and runs of
// spaces, for comparing commands.
func canonCommand(s string) string {
	return oneLine(markdown.StripComment(strings.ReplaceAll(s, "\\\n", " ")))
}

var errCompound = errors.New("more than one command, or a redirection, on one line: the docs tests account for single commands (make, go test, apt-get install); show the line in a console transcript, or split it")

// shellWords splits a command into words as the shell would, for the simple
// commands the rules accept: quotes are removed, and an unquoted operator or
// substitution is errCompound.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			} else if c == '\\' && q == '"' && i+1 < len(s) {
				i++
				w.WriteByte(s[i])
			} else {
				w.WriteByte(c)
			}
		case c == '\'' || c == '"':
			q, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case strings.IndexByte(";&|<>()`$", c) >= 0:
			return nil, errCompound
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if q != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// CheckCommand says why a command shown without its output (an sh block's
// line, a `$ ` line outside a run transcript) is not accounted for, or nil
// if it is one of: make TARGET... [VAR=value...] with the Makefile's
// targets; go test ... -run/-bench/-fuzz REGEX PKG... naming tests of those
// packages; apt-get install PKG... of the packages .ci/run installs; each
// with VAR=value assignments before it if need be.
func (r *Repo) CheckCommand(cmd string) error {
	words, err := shellWords(markdown.StripComment(strings.ReplaceAll(cmd, "\\\n", " ")))
	if err != nil {
		return err
	}
	for len(words) > 0 && assignment.MatchString(words[0]) {
		words = words[1:]
	}
	switch {
	case len(words) > 0 && words[0] == "make":
		return r.checkMake(words[1:])
	case len(words) > 1 && words[0] == "go" && words[1] == "test":
		return r.checkGoTest(words[2:])
	case len(words) > 1 && words[0] == "apt-get" && words[1] == "install":
		return r.checkApt(words[2:])
	}
	return errors.New("no test runs this: show it in a console transcript (run by test/docs), in an sh block marked <!-- doctest: e2e --> (run by make e2e), " +
		"or make it make TARGET, go test -run REGEX PKG, or apt-get install of .ci/run's packages")
}

func (r *Repo) checkMake(args []string) error {
	targets := 0
	for _, a := range args {
		switch {
		case assignment.MatchString(a):
		case strings.HasPrefix(a, "-"):
			return fmt.Errorf("make option %s: the docs tests account for make TARGET [VAR=value...] only", a)
		case !r.MakeTargets[a]:
			return fmt.Errorf("the Makefile has no target %q", a)
		default:
			targets++
		}
	}
	if targets == 0 {
		return errors.New("make without a target: name the target")
	}
	return nil
}

func (r *Repo) checkApt(args []string) error {
	pkgs := 0
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			continue
		}
		if !r.AptPackages[a] {
			return fmt.Errorf("package %s is not one .ci/run installs (its need lines), so CI never proves the docs' list", a)
		}
		pkgs++
	}
	if pkgs == 0 {
		return errors.New("apt-get install without a package")
	}
	return nil
}

// goTestValueFlags are the go test flags that take a value.
var goTestValueFlags = map[string]bool{
	"run": true, "bench": true, "fuzz": true, "skip": true, "timeout": true, "count": true, "cpu": true,
	"parallel": true, "benchtime": true, "fuzztime": true, "tags": true, "p": true, "coverprofile": true,
	"covermode": true, "coverpkg": true, "shuffle": true, "ldflags": true, "o": true, "exec": true,
}

var goTestBoolFlags = map[string]bool{
	"v": true, "race": true, "short": true, "cover": true, "failfast": true, "json": true, "benchmem": true,
	"trimpath": true, "x": true, "c": true, "fullpath": true,
}

func (r *Repo) checkGoTest(args []string) error {
	sel := map[string]string{} // run, bench, fuzz -> regex
	var pkgs []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			pkgs = append(pkgs, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case goTestValueFlags[name]:
			if !hasVal {
				if i+1 == len(args) {
					return fmt.Errorf("go test flag %s without a value", a)
				}
				i++
				val = args[i]
			}
			if name == "run" || name == "bench" || name == "fuzz" {
				sel[name] = val
			}
		case goTestBoolFlags[name]:
		default:
			return fmt.Errorf("go test flag %s: not one the docs tests know", a)
		}
	}
	if len(sel) == 0 {
		return errors.New("go test without -run, -bench or -fuzz: name the tests it shows (or show make test)")
	}
	if len(pkgs) == 0 {
		return errors.New("go test without a package: name it (./pkg/driver/)")
	}
	kinds := map[string][]string{"run": {"Test", "Example", "Fuzz"}, "bench": {"Benchmark"}, "fuzz": {"Fuzz"}}
	names := map[string][]string{} // package -> its test functions
	for _, p := range pkgs {
		dirs, err := r.packageDirs(p)
		if err != nil {
			return err
		}
		for _, d := range dirs {
			n, err := testFuncs(d)
			if err != nil {
				return err
			}
			names[p] = append(names[p], n...)
		}
	}
	for _, flag := range []string{"run", "bench", "fuzz"} {
		re, ok := sel[flag]
		if !ok || flag == "run" && (sel["bench"] != "" || sel["fuzz"] != "") {
			continue // -run '^$' -bench X: the benchmarks are the point
		}
		alts, err := topLevelAlternatives(re)
		if err != nil {
			return fmt.Errorf("go test -%s %q: %w", flag, re, err)
		}
		// Each package has a function it names, and each alternative
		// names a function: an alternative that names none is a test the
		// docs say runs, and none does.
		used := make([]bool, len(alts))
		for _, p := range pkgs {
			found := false
			for i, a := range alts {
				for _, n := range names[p] {
					for _, k := range kinds[flag] {
						if strings.HasPrefix(n, k) && a.re.MatchString(n) {
							found, used[i] = true, true
						}
					}
				}
			}
			if !found {
				return fmt.Errorf("go test -%s %q names no %s in %s", flag, re, strings.Join(kinds[flag], "/"), p)
			}
		}
		for i, a := range alts {
			if !used[i] {
				return fmt.Errorf("go test -%s %q: its alternative %q names no %s in %s", flag, re, a.src, strings.Join(kinds[flag], "/"), strings.Join(pkgs, " "))
			}
		}
	}
	return nil
}

const modulePath = "github.com/hostpath-csi/hostpath-csi"

// packageDirs are the directories of a package argument of go test, as run
// from the repository's root: ./dir, ./dir/... or an import path.
func (r *Repo) packageDirs(p string) ([]string, error) {
	rel := p
	if s, ok := strings.CutPrefix(p, modulePath); ok {
		rel = "." + s
	}
	if !strings.HasPrefix(rel, "./") && rel != "." {
		return nil, fmt.Errorf("go test package %s: write it ./dir/ from the repository's root", p)
	}
	recursive := false
	if s, ok := strings.CutSuffix(rel, "/..."); ok {
		rel, recursive = s, true
	}
	root := filepath.Join(r.Root, rel)
	if err := r.inMainModule(root); err != nil {
		return nil, fmt.Errorf("go test package %s: %w", p, err)
	}
	st, err := os.Stat(root)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("go test package %s: no such directory", p)
	}
	if !recursive {
		return []string{root}, nil
	}
	var dirs []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if path != root {
			if n := d.Name(); n == "testdata" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir // another module: ./... stops there
			}
		}
		dirs = append(dirs, path)
		return nil
	})
	return dirs, err
}

// inMainModule fails for a directory inside a nested module (test/e2e):
// go test run from the root cannot test it.
func (r *Repo) inMainModule(dir string) error {
	root := filepath.Clean(r.Root)
	for d := filepath.Clean(dir); d != root && strings.HasPrefix(d, root+"/"); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			rel, _ := filepath.Rel(root, d)
			return fmt.Errorf("it is in the module %s, which go test run from the repository's root does not reach", rel)
		}
	}
	return nil
}

// testFuncs are the top-level Test, Benchmark, Fuzz and Example functions
// of the _test.go files in dir.
func testFuncs(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		return nil, err
	}
	var names []string
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", f, err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				for _, k := range []string{"Test", "Benchmark", "Fuzz", "Example"} {
					if rest, ok := strings.CutPrefix(fd.Name.Name, k); ok && (rest == "" || !isLower(rest[0])) {
						names = append(names, fd.Name.Name)
					}
				}
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }

// An alternative is a top-level alternative of a -run/-bench regexp, and
// the part of it go test matches against top-level names.
type alternative struct {
	src string
	re  *regexp.Regexp
}

// topLevelAlternatives splits a -run/-bench regexp as go test does: at
// each | outside brackets and parentheses into alternatives, and each at
// its first such slash, before which is what top-level names must match.
func topLevelAlternatives(re string) ([]alternative, error) {
	var alts []alternative
	for _, a := range splitTopLevel(re, '|') {
		top := splitTopLevel(a, '/')[0]
		if top == "" {
			return nil, fmt.Errorf("the alternative %q matches every test", a)
		}
		c, err := regexp.Compile(top)
		if err != nil {
			return nil, err
		}
		alts = append(alts, alternative{a, c})
	}
	return alts, nil
}

// splitTopLevel splits s at each sep outside brackets and parentheses.
func splitTopLevel(s string, sep byte) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '[', '(':
			depth++
		case ']', ')':
			depth--
		case sep:
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
