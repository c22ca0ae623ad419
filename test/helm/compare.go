package helm

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// HelmLabels are the labels the chart adds to the metadata of every object
// it templates (not to pod templates or selectors), with their values: the
// only additions to the kustomize objects that need no reason.
func HelmLabels(chartName, chartVersion, release string) map[string]string {
	return map[string]string{
		"helm.sh/chart":                chartName + "-" + chartVersion,
		"app.kubernetes.io/managed-by": "Helm",
		"app.kubernetes.io/instance":   release,
	}
}

// StripHelmLabels removes labels from an object's metadata.labels, each
// only with its expected value (another value is a difference), and the
// labels map if nothing else is left. It returns the labels it did not find,
// and modifies o.
func StripHelmLabels(o Object, labels map[string]string) (missing []string) {
	md, _ := o["metadata"].(map[string]any)
	ls, _ := md["labels"].(map[string]any)
	for k, v := range labels {
		if ls[k] == v {
			delete(ls, k)
		} else if _, ok := ls[k]; !ok {
			missing = append(missing, k)
		}
	}
	if md != nil && ls != nil && len(ls) == 0 {
		delete(md, "labels")
	}
	sort.Strings(missing)
	return missing
}

// A Difference is one place where two objects differ: a path in the object
// (.spec.template.spec.containers[0].args), and each side's value there
// (absent: <none>).
type Difference struct {
	Path        string
	Helm, Kusto string
}

func (d Difference) String() string {
	return fmt.Sprintf("%s: helm %s, kustomize %s", d.Path, d.Helm, d.Kusto)
}

// Diff lists where helm's object differs from kustomize's, key order
// aside: maps by key, lists of named items by name (and their order), other
// lists element by element (a list of another length is one difference,
// shown whole).
func Diff(helm, kusto Object) []Difference {
	var out []Difference
	diff("", map[string]any(helm), map[string]any(kusto), &out)
	return out
}

const none = "<none>"

func diff(path string, a, b any, out *[]Difference) {
	am, aIsMap := a.(map[string]any)
	bm, bIsMap := b.(map[string]any)
	if aIsMap && bIsMap {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			av, aok := am[k]
			bv, bok := bm[k]
			p := path + "." + k
			switch {
			case !aok:
				*out = append(*out, Difference{p, none, show(bv)})
			case !bok:
				*out = append(*out, Difference{p, show(av), none})
			default:
				diff(p, av, bv, out)
			}
		}
		return
	}
	al, aIsList := a.([]any)
	bl, bIsList := b.([]any)
	if an, bn := names(al), names(bl); aIsList && bIsList && an != nil && bn != nil && sameSet(an, bn) {
		// A list of named items (containers, env, volumes, ports), as the
		// API server's strategic merge treats it: by name; an order of
		// its own is a difference at path (order).
		if !reflect.DeepEqual(an, bn) {
			*out = append(*out, Difference{path + " (order)", strings.Join(an, ","), strings.Join(bn, ",")})
		}
		bi := map[string]any{}
		for i, n := range bn {
			bi[n] = bl[i]
		}
		for i, n := range an {
			diff(fmt.Sprintf("%s[name=%s]", path, n), al[i], bi[n], out)
		}
		return
	}
	if aIsList && bIsList && len(al) == len(bl) {
		for i := range al {
			diff(fmt.Sprintf("%s[%d]", path, i), al[i], bl[i], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, Difference{path, show(a), show(b)})
	}
}

// show is a value on one line, as YAML in flow style would be.
func show(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%#v", v)
	}
	s := strings.TrimSpace(string(b))
	if strings.Contains(s, "\n") {
		return "\n\t\t" + strings.ReplaceAll(s, "\n", "\n\t\t")
	}
	return s
}

// names are the names of a list's items if each is a map with a name of
// its own, nil otherwise.
func names(l []any) []string {
	if len(l) == 0 {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok {
			return nil
		}
		n, ok := m["name"].(string)
		if !ok || seen[n] {
			return nil
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[string]bool{}
	for _, n := range a {
		in[n] = true
	}
	for _, n := range b {
		if !in[n] {
			return false
		}
	}
	return true
}
