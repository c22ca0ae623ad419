package docs

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

func parseOne(t *testing.T, src string) (markdown.Block, error) {
	t.Helper()
	d, err := markdown.Parse(src)
	if err != nil {
		return markdown.Block{}, err
	}
	if len(d.Blocks) != 1 {
		t.Fatalf("%d blocks in %q", len(d.Blocks), src)
	}
	return d.Blocks[0], nil
}

func TestParseTranscript(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		want    []Command
		dir     Directive
		wantErr string
	}{
		{
			name: "commands, output, status",
			src:  "```console\n$ a\nout 1\n\nout 2\n$ b \\\n  --flag\n$ c\nerr\n[2]\n```\n",
			want: []Command{
				{Line: 2, Text: "a", Expected: []string{"out 1", "", "out 2"}, ExpLine: 3},
				{Line: 6, Text: "b \\\n  --flag"},
				{Line: 8, Text: "c", Expected: []string{"err"}, ExpLine: 9, Status: 2},
			},
		},
		{
			name: "restart with flags",
			src:  "<!-- doctest: restart --max-volume-size=1Gi --project-quotas -->\n```console\n$ a\n```\n",
			want: []Command{{Line: 3, Text: "a"}},
			dir:  Directive{Restart: true, Flags: []string{"--max-volume-size=1Gi", "--project-quotas"}},
		},
		{
			name: "restart",
			src:  "<!-- doctest: restart -->\n```console\n$ a\n```\n",
			want: []Command{{Line: 3, Text: "a"}},
			dir:  Directive{Restart: true, Flags: []string{}},
		},
		{
			name: "skip",
			src:  "<!-- doctest: skip takes an hour -->\n```console\n$ make torture\n```\n",
			want: []Command{{Line: 3, Text: "make torture"}},
			dir:  Directive{Skip: "takes an hour"},
		},
		{name: "only ...", src: "```console\n$ a\nx\n$ make demo\n...\n  ...\n$ c\n```\n", wantErr: "line 5: the output of $ make demo is only ... lines"},
		{name: "only ... and a status", src: "```console\n$ a\n...\n[1]\n```\n", wantErr: "line 3: the output of $ a is only ... lines"},
		{
			name: "... and a line",
			src:  "```console\n$ a\n...\nx\n```\n",
			want: []Command{{Line: 2, Text: "a", Expected: []string{"...", "x"}, ExpLine: 3}},
		},
		{name: "output first", src: "```console\nout\n$ a\n```\n", wantErr: "line 2: a console block starts with a command"},
		{name: "no command", src: "```console\n```\n", wantErr: "without a command"},
		{name: "empty command", src: "```console\n$ \n```\n", wantErr: "line 2: empty command"},
		{name: "status 0", src: "```console\n$ a\n[0]\n```\n", wantErr: "line 3: an exit status line is [N] with N > 0"},
		{name: "skip without a reason", src: "<!-- doctest: skip -->\n```console\n$ a\n```\n", wantErr: "line 1: skip needs a reason"},
		{name: "restart with an argument", src: "<!-- doctest: restart now -->\n```console\n$ a\n```\n", wantErr: `restart takes driver flags (--name or --name=value), not "now"`},
		{name: "unknown directive", src: "<!-- doctest: retry -->\n```console\n$ a\n```\n", wantErr: `line 1: unknown doctest directive "retry"`},
		{name: "e2e on a console block", src: "<!-- doctest: e2e -->\n```console\n$ a\n```\n", wantErr: `unknown doctest directive "e2e" before a "console" block`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseOne(t, tc.src)
			var tr Transcript
			if err == nil {
				tr, err = ParseTranscript(b)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tr.Commands, tc.want) {
				t.Errorf("commands:\n got %#v\nwant %#v", tr.Commands, tc.want)
			}
			if !reflect.DeepEqual(tr.Directive, tc.dir) {
				t.Errorf("directive %#v, want %#v", tr.Directive, tc.dir)
			}
		})
	}
}

func TestParseDirectiveOtherBlocks(t *testing.T) {
	for _, tc := range []struct {
		src     string
		wantErr string
	}{
		{"<!-- doctest: e2e -->\n```sh\nkubectl get pv\n```\n", ""},
		{"<!-- doctest: e2e -->\n```bash\nkubectl get pv\n```\n", ""},
		{"<!-- doctest: skip later -->\n```sh\nmake e2e\n```\n", `unknown doctest directive "skip later" before a "sh" block`},
		{"<!-- doctest: e2e -->\n```yaml\nkind: Pod\n```\n", `unknown doctest directive "e2e" before a "yaml" block`},
		{"```yaml\nkind: Pod\n```\n", ""},
	} {
		b, err := parseOne(t, tc.src)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseDirective(b)
		if (err != nil) != (tc.wantErr != "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.wantErr)
		}
	}
}
