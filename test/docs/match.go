package docs

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Normalization is one kind of text that varies from run to run: every
// match, in expected and in actual output alike, becomes Placeholder, so
// that any value matches any other of its kind.
type Normalization struct {
	Name        string
	Re          *regexp.Regexp
	Replacement string // regexp.ReplaceAllString's template
}

// Normalizations apply in this order, outside IDs (see idKinds).
var Normalizations = []Normalization{
	// klog's header: severity letter, date, time, thread, file:line.
	{"klog header", regexp.MustCompile(`^([IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d{6}\s+\d+ [^ \]]+:\d+\] `), "${1}⟪klog header⟫ "},
	{"RFC 3339 timestamp", regexp.MustCompile(`\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})`), "⟪timestamp⟫"},
	// A quoted duration field: whatever its value.
	{"duration field", regexp.MustCompile(`\bduration="[^"]*"`), `duration="⟪duration⟫"`},
	// A Go duration: 160µs, 6.38ms, 2.5s, 1m30s.
	{"duration", regexp.MustCompile(`(^|[^\w.])(\d+(\.\d+)?(ns|us|µs|μs|ms|s|m|h))+\b`), "${1}⟪duration⟫"},
}

// idKind is a kind of ID the driver makes at random: a doc's ID of a kind
// binds to the actual ID of that kind at its place (see matchLine).
type idKind struct {
	name string
	re   string // without anchors
}

var idKinds = []idKind{
	{"volume", regexp.QuoteMeta(ids.VolumePrefixV1) + `[0-9a-f]{32}`},
	{"snapshot", regexp.QuoteMeta(ids.SnapshotPrefixV1) + `[0-9a-f]{32}`},
	{"group snapshot", regexp.QuoteMeta(ids.GroupSnapshotPrefixV1) + `[0-9a-f]{32}`},
	// nfs1:<server>:<share>:<subDir>:<key>, nfss1:<server>:<share>:<key>:
	// only the key is random, but the ID is bound whole.
	{"NFS volume", regexp.QuoteMeta(ids.NFSVolumePrefixV1) + `[^\s"'` + "`" + `,;]+:[0-9a-f]{` + strconv.Itoa(ids.NFSKeyHexLen) + `}`},
	{"NFS snapshot", regexp.QuoteMeta(ids.NFSSnapshotPrefixV1) + `[^\s"'` + "`" + `,;]+:[0-9a-f]{` + strconv.Itoa(ids.NFSKeyHexLen) + `}`},
}

var anyID = func() *regexp.Regexp {
	var alts []string
	for _, k := range idKinds {
		alts = append(alts, "("+k.re+")")
	}
	return regexp.MustCompile(`\b(?:` + strings.Join(alts, "|") + `)\b`)
}()

// idSpan is an ID found in a line.
type idSpan struct {
	kind       int // index in idKinds
	start, end int
}

func findIDs(s string) []idSpan {
	var out []idSpan
	for _, m := range anyID.FindAllStringSubmatchIndex(s, -1) {
		for k := range idKinds {
			if m[2+2*k] >= 0 {
				out = append(out, idSpan{kind: k, start: m[0], end: m[1]})
				break
			}
		}
	}
	return out
}

// normalize applies Normalizations to s outside its IDs (an NFS server's
// name may look like a duration) and makes each run of spaces one space,
// leading and trailing ones none: column padding depends on the lengths of
// paths and durations, which differ between the docs and a run. It returns
// the result and the IDs in it.
func normalize(s string) (string, []idSpan) {
	spans := findIDs(s)
	var b strings.Builder
	var saved []string
	last := 0
	for i, sp := range spans {
		b.WriteString(s[last:sp.start])
		b.WriteString("\x00" + strconv.Itoa(i) + "\x00")
		saved = append(saved, s[sp.start:sp.end])
		last = sp.end
	}
	b.WriteString(s[last:])
	t := b.String()
	for _, n := range Normalizations {
		t = n.Re.ReplaceAllString(t, n.Replacement)
	}
	t = strings.Join(strings.Fields(t), " ")
	for i, id := range saved {
		t = strings.Replace(t, "\x00"+strconv.Itoa(i)+"\x00", id, 1)
	}
	return t, findIDs(t)
}

// Bindings map a doc's IDs to the IDs a run made, both ways.
type Bindings struct {
	docToActual map[string]string
	actualToDoc map[string]string
}

// NewBindings is an empty set of bindings.
func NewBindings() *Bindings {
	return &Bindings{docToActual: map[string]string{}, actualToDoc: map[string]string{}}
}

func (b *Bindings) clone() *Bindings {
	c := NewBindings()
	for k, v := range b.docToActual {
		c.docToActual[k], c.actualToDoc[v] = v, k
	}
	return c
}

func (b *Bindings) bind(doc, actual string) { b.docToActual[doc], b.actualToDoc[actual] = actual, doc }

// ToActual replaces every bound doc ID in s (a command) by its actual ID.
func (b *Bindings) ToActual(s string) string { return replaceIDs(s, b.docToActual) }

// ToDoc replaces every bound actual ID in s by its doc ID.
func (b *Bindings) ToDoc(s string) string { return replaceIDs(s, b.actualToDoc) }

func replaceIDs(s string, m map[string]string) string {
	return anyID.ReplaceAllStringFunc(s, func(id string) string {
		if r, ok := m[id]; ok {
			return r
		}
		return id
	})
}

// matchLine matches an expected line against an actual one (both raw),
// with the IDs bound so far; on a match it returns the bindings it added.
func matchLine(expected, actual string, b *Bindings) (map[string]string, bool) {
	return matchLineIDs(expected, actual, b, false)
}

// matchLineIDs is matchLine; with literalIDs, an expected ID matches only
// itself (for Diff, whose actual lines show bound IDs as the doc's).
func matchLineIDs(expected, actual string, b *Bindings, literalIDs bool) (map[string]string, bool) {
	e, eIDs := normalize(expected)
	a, _ := normalize(actual)
	// Tokens: literal text, ... and IDs.
	type token struct {
		lit  string
		wild bool
		id   *idSpan
	}
	var toks []token
	lits := func(s string) {
		for _, part := range splitEllipsis(s) {
			if part == "..." {
				toks = append(toks, token{wild: true})
			} else {
				toks = append(toks, token{lit: part})
			}
		}
	}
	last := 0
	for i := range eIDs {
		lits(e[last:eIDs[i].start])
		toks = append(toks, token{id: &eIDs[i]})
		last = eIDs[i].end
	}
	lits(e[last:])
	var re strings.Builder
	re.WriteString("^")
	var captures []string // doc ID of each capture group
	for i, tk := range toks {
		switch {
		case tk.id != nil:
			doc := e[tk.id.start:tk.id.end]
			if act, ok := b.docToActual[doc]; ok || literalIDs {
				if literalIDs {
					act = doc
				}
				re.WriteString(regexp.QuoteMeta(act))
			} else {
				re.WriteString("(" + idKinds[tk.id.kind].re + ")")
				captures = append(captures, doc)
			}
		case tk.wild:
			// Spaces count as one: "a ... b" matches "a b", "version: ..."
			// matches "version:", "... passed" matches "passed". The
			// space a wildcard may take with it is dropped from the
			// neighbouring literal (there is at most one: collapsed).
			leftSpace := i == 0 || toks[i-1].id == nil && !toks[i-1].wild && strings.HasSuffix(toks[i-1].lit, " ")
			rightSpace := i+1 < len(toks) && toks[i+1].id == nil && !toks[i+1].wild && strings.HasPrefix(toks[i+1].lit, " ")
			switch {
			case i+1 == len(toks) && i > 0 && leftSpace:
				re.WriteString("(?: .*)?")
			case leftSpace && rightSpace:
				toks[i+1].lit = toks[i+1].lit[1:]
				re.WriteString("(?:.*? )?")
			default:
				re.WriteString(".*?")
			}
		default:
			lit := tk.lit
			if i+2 == len(toks) && toks[i+1].wild && strings.HasSuffix(lit, " ") {
				lit = lit[:len(lit)-1] // the space goes with the wildcard
			}
			re.WriteString(regexp.QuoteMeta(lit))
		}
	}
	re.WriteString("$")
	m := regexp.MustCompile(re.String()).FindStringSubmatch(a)
	if m == nil {
		return nil, false
	}
	added := map[string]string{}
	for i, doc := range captures {
		act := m[1+i]
		if prev, ok := added[doc]; ok && prev != act {
			return nil, false // one doc ID, two actual IDs
		}
		if other, ok := b.actualToDoc[act]; ok && other != doc {
			return nil, false // that actual ID is another doc ID's
		}
		for d, a := range added {
			if a == act && d != doc {
				return nil, false
			}
		}
		added[doc] = act
	}
	return added, true
}

// splitEllipsis cuts s into literal parts and "..." wildcards. In a run of
// more than three dots the last three are the wildcard: "stray-dir...."
// is "stray-dir." and any text.
func splitEllipsis(s string) []string {
	var out []string
	lit := 0 // start of the current literal
	for i := 0; i < len(s); {
		if s[i] != '.' {
			i++
			continue
		}
		j := i
		for j < len(s) && s[j] == '.' {
			j++
		}
		if j-i >= 3 {
			if lit < j-3 {
				out = append(out, s[lit:j-3])
			}
			out = append(out, "...")
			lit = j
		}
		i = j
	}
	if lit < len(s) {
		out = append(out, s[lit:])
	}
	return out
}

// isEllipsisLine says whether an expected line is `...` alone: any number
// of lines.
func isEllipsisLine(s string) bool { return strings.TrimSpace(s) == "..." }

// maxSteps bounds the search of matchLines (a few `...` lines against a
// long output).
const maxSteps = 1 << 20

// matchLines matches expected lines against actual ones. On a match it
// returns the bindings b plus those the match made.
func matchLines(expected, actual []string, b *Bindings) (*Bindings, bool) {
	steps := 0
	var rec func(i, j int, b *Bindings) (*Bindings, bool)
	rec = func(i, j int, b *Bindings) (*Bindings, bool) {
		if steps++; steps > maxSteps {
			return nil, false
		}
		if i == len(expected) {
			return b, j == len(actual)
		}
		if isEllipsisLine(expected[i]) {
			for k := j; k <= len(actual); k++ {
				if r, ok := rec(i+1, k, b); ok {
					return r, true
				}
			}
			return nil, false
		}
		if j == len(actual) {
			return nil, false
		}
		added, ok := matchLine(expected[i], actual[j], b)
		if !ok {
			return nil, false
		}
		nb := b
		if len(added) > 0 {
			nb = b.clone()
			for d, a := range added {
				nb.bind(d, a)
			}
		}
		return rec(i+1, j+1, nb)
	}
	return rec(0, 0, b)
}

// Result is what a command did.
type Result struct {
	Output  string // stdout and stderr, as the doc would show them (paths and ports as in the docs)
	Status  int
	Running bool // still running (a driver in the foreground) when the next command was due
}

// OutputLines splits output into lines, without the last newline.
func OutputLines(out string) []string {
	if out == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// Check compares a command's result with what its doc says, binding IDs in
// b on a match. On a mismatch it returns an error with a diff, expected
// lines as "-", actual ones as "+" (bound IDs shown as the doc's).
func Check(c Command, r Result, b *Bindings) error {
	actual := OutputLines(r.Output)
	nb, ok := matchLines(c.Expected, actual, b)
	statusOK := !r.Running && r.Status == c.Status || r.Running && c.Status == 0
	if ok && statusOK {
		*b = *nb
		return nil
	}
	shown := make([]string, len(actual))
	for i, l := range actual {
		shown[i] = b.ToDoc(l)
	}
	exp := append([]string(nil), c.Expected...)
	if c.Status != 0 {
		exp = append(exp, fmt.Sprintf("[%d]", c.Status))
	}
	switch {
	case r.Running && c.Status != 0:
		shown = append(shown, "(still running)")
	case !r.Running && r.Status != 0:
		shown = append(shown, fmt.Sprintf("[%d]", r.Status))
	}
	what := "output differs"
	if ok {
		what = "exit status differs"
	}
	return fmt.Errorf("%s (- expected, + actual):\n%s", what, Diff(exp, shown))
}

// Diff is a line diff of expected lines a and actual lines b: common lines
// indented, a's only with "-", b's only with "+". Lines compare equal when
// the actual one matches the expected one, IDs compared as they are; a
// line of ... alone equals none.
func Diff(a, b []string) string {
	eq := func(x, y string) bool {
		if isEllipsisLine(x) {
			return false // shown as expected: its lines show as actual ones
		}
		_, ok := matchLineIDs(x, y, NewBindings(), true)
		return ok
	}
	// Longest common subsequence, by dynamic programming: docs outputs are
	// short.
	n, m := len(a), len(b)
	l := make([][]int, n+1)
	for i := range l {
		l[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if eq(a[i], b[j]) {
				l[i][j] = l[i+1][j+1] + 1
			} else {
				l[i][j] = max(l[i+1][j], l[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && eq(a[i], b[j]):
			out.WriteString("  " + b[j] + "\n")
			i, j = i+1, j+1
		case i < n && (j == m || l[i+1][j] >= l[i][j+1]):
			out.WriteString("- " + a[i] + "\n")
			i++
		default:
			out.WriteString("+ " + b[j] + "\n")
			j++
		}
	}
	return out.String()
}
