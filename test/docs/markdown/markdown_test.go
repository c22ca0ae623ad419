package markdown

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		want    []Block
		prose   int // number of prose lines
		wantErr string
	}{
		{
			name: "fences, info strings, directive",
			src:  "text\n```console\n$ ls\nout\n```\n<!-- doctest: skip not here -->\n~~~~ sh extra words\nmake run\n~~~~\n",
			want: []Block{
				{Line: 2, Info: "console", Lines: []string{"$ ls", "out"}},
				{Line: 7, Info: "sh", Directive: "skip not here", HasDirective: true, Lines: []string{"make run"}},
			},
			prose: 2,
		},
		{
			name:  "no info string, a longer closing fence, indented block in a list",
			src:   "- item\n\n   ```\n   $ ls\n     indented\n   `````\n",
			want:  []Block{{Line: 3, Info: "", Lines: []string{"$ ls", "  indented"}}},
			prose: 2,
		},
		{
			name:  "a fence of the other character does not close",
			src:   "```\n~~~\n```\n",
			want:  []Block{{Line: 1, Info: "", Lines: []string{"~~~"}}},
			prose: 0,
		},
		{
			name:  "inline code is not a fence",
			src:   "``` `x` ```\n",
			prose: 1,
		},
		{
			name:  "a directive inside a block is content",
			src:   "```markdown\n<!-- doctest: skip x -->\n```\n",
			want:  []Block{{Line: 1, Info: "markdown", Lines: []string{"<!-- doctest: skip x -->"}}},
			prose: 0,
		},
		{name: "unclosed fence", src: "```sh\nmake run\n", wantErr: "line 1: fenced block not closed"},
		{name: "directive before text", src: "<!-- doctest: restart -->\ntext\n", wantErr: "line 1: doctest directive not on the line right before a fenced block"},
		{name: "directive before a blank line", src: "<!-- doctest: restart -->\n\n```console\n$ ls\n```\n", wantErr: "line 1: doctest directive not on"},
		{name: "directive at the end", src: "x\n<!-- doctest: restart -->", wantErr: "line 2: doctest directive not on"},
		{name: "directive on two lines", src: "<!-- doctest: restart\n-->\n```console\n```\n", wantErr: "line 1: a doctest directive is one line"},
		{name: "empty directive", src: "<!-- doctest: -->\n```console\n```\n", wantErr: "line 1: a doctest directive is one line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse(tc.src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse: error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Blocks, tc.want) {
				t.Errorf("blocks:\n got %#v\nwant %#v", d.Blocks, tc.want)
			}
			if len(d.Prose) != tc.prose {
				t.Errorf("%d prose lines %v, want %d", len(d.Prose), d.Prose, tc.prose)
			}
		})
	}
}

func TestShellLines(t *testing.T) {
	got := ShellLines([]string{"make run  # comment", "", "  # only a comment", `go test \`, `  -run X \`, "  ./pkg/", "make demo"}, 10)
	want := []Line{{10, "make run  # comment"}, {13, "go test \\\n  -run X \\\n  ./pkg/"}, {16, "make demo"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ShellLines:\n got %v\nwant %v", got, want)
	}
}

// The fixture test/e2e's unit test reads too: the same blocks, the same
// lines, from the same source file (test/e2e/markdown is a symlink here).
func TestE2ELines(t *testing.T) {
	b, err := os.ReadFile("../testdata/e2e.md")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	got := E2ELines(d, E2ESingleNode)
	want := []Line{
		{5, "kubectl apply -k deploy/kubernetes/overlays/single-node   # the driver"},
		{8, "kubectl -n hostpath-csi rollout status \\\n  daemonset/hostpath-csi"},
		{20, "kubectl get storageclass"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("E2ELines:\n got %v\nwant %v", got, want)
	}
}

// test/e2e compiles this very file: its copy is a symlink, not a copy that
// could drift.
func TestE2EModuleSharesThisFile(t *testing.T) {
	link := "../../e2e/markdown/markdown.go"
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("%s should be a symlink to test/docs/markdown/markdown.go: %v", link, err)
	}
	if target != "../../docs/markdown/markdown.go" {
		t.Errorf("%s -> %s, want ../../docs/markdown/markdown.go", link, target)
	}
}
