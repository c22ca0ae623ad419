// Package helm checks the chart charts/hostpath-csi against the kustomize
// overlays of deploy/kubernetes: for each flavour and option, `helm install`'s
// rendering and `kustomize build` must be the same objects, but for Helm's
// labels and the differences listed in intendedDifferences. It is a module
// of its own (like test/e2e), so that the main module does not take on Helm's
// and kustomize's dependencies; its go.mod also names the helm command as a
// tool, which `make helm` builds into _output/bin/helm.
package helm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/getter"
	release "helm.sh/helm/v4/pkg/release/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Object is one Kubernetes object, as the API server would read it from
// YAML (sigs.k8s.io/yaml, what kubectl and Helm use: JSON types, 0444 an
// octal number).
type Object map[string]any

// Key names an object: kind, namespace (empty if cluster-scoped) and name.
type Key struct{ Kind, Namespace, Name string }

func (k Key) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// ClusterScoped are the kinds of cluster-scoped objects the chart and the
// overlays make. A namespace in their metadata means nothing (the API server
// drops it), so their Key has none.
var ClusterScoped = map[string]bool{
	"Namespace": true, "CSIDriver": true, "StorageClass": true, "ClusterRole": true,
	"ClusterRoleBinding": true, "CustomResourceDefinition": true,
	"VolumeSnapshotClass": true, "VolumeGroupSnapshotClass": true,
}

// KeyOf is an object's Key.
func KeyOf(o Object) Key {
	md, _ := o["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	kind, _ := o["kind"].(string)
	if ClusterScoped[kind] {
		ns = ""
	}
	return Key{kind, ns, name}
}

// Objects are a rendering's objects by Key.
type Objects map[Key]Object

// Keys are the objects' keys, sorted.
func (objs Objects) Keys() []Key {
	ks := make([]Key, 0, len(objs))
	for k := range objs {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].String() < ks[j].String() })
	return ks
}

// ParseObjects reads a multi-document YAML stream; two objects with one Key
// are an error, as they would be for kubectl apply.
func ParseObjects(stream string) (Objects, error) {
	out := Objects{}
	for i, doc := range splitDocuments(stream) {
		var o Object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(o) == 0 {
			continue // only comments, or a template that rendered nothing
		}
		k := KeyOf(o)
		if k.Kind == "" || k.Name == "" {
			return nil, fmt.Errorf("document %d has no kind or name:\n%s", i, doc)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s twice", k)
		}
		out[k] = o
	}
	return out, nil
}

// splitDocuments splits a YAML stream at its --- lines.
func splitDocuments(stream string) []string {
	var docs []string
	var cur strings.Builder
	for _, l := range strings.SplitAfter(stream, "\n") {
		if strings.TrimRight(l, " \r\n") == "---" {
			docs = append(docs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(l)
	}
	return append(docs, cur.String())
}

// Release is what the chart is installed as in the tests.
const (
	ReleaseName      = "hostpath-csi"
	ReleaseNamespace = "default"
)

// InstallOptions are the flags of helm install that the tests use.
type InstallOptions struct {
	// Values as -f, --set and --set-string take them.
	Values values.Options
	// SkipCRDs leaves crds/ out, as --skip-crds does. (A client-only dry
	// run never installs CRDs: IncludeCRDs, their being in the manifest,
	// stands for the install's creating them.)
	SkipCRDs bool
	// SkipSchemaValidation: --skip-schema-validation, which leaves the
	// templates' own checks.
	SkipSchemaValidation bool
}

// Install renders the chart as `helm install --dry-run=client` (and `helm
// template`) does: action.Install's Run with the client-only dry-run
// strategy. That is the code of a real `helm install` up to where it would
// talk to the cluster: values merged and checked against values.schema.json,
// the templates rendered with an install's release options and
// capabilities, crds/ (with IncludeCRDs), the manifest split and sorted in
// install order. Calling the engine directly would skip the schema, the
// release options and crds/, and so test less of what an install does.
func Install(chartDir string, o InstallOptions) (string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return "", fmt.Errorf("load the chart %s: %w", chartDir, err)
	}
	vals, err := o.Values.MergeValues(getter.Providers{})
	if err != nil {
		return "", fmt.Errorf("values: %w", err)
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.NewTextHandler(io.Discard, nil)))
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = ReleaseName
	inst.Namespace = ReleaseNamespace
	inst.IncludeCRDs = !o.SkipCRDs
	inst.SkipSchemaValidation = o.SkipSchemaValidation
	r, err := inst.Run(ch, vals)
	if err != nil {
		return "", fmt.Errorf("helm install --dry-run=client: %w", err)
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return "", fmt.Errorf("helm install returned a %T, not a v1 release", r)
	}
	if len(rel.Hooks) > 0 {
		return "", errors.New("the chart has hooks: compare them too")
	}
	return rel.Manifest, nil
}

// Lint runs `helm lint --strict` with the given values and returns every
// warning and error.
func Lint(chartDir string, opts values.Options) ([]string, error) {
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		return nil, err
	}
	l := action.NewLint()
	l.Strict = true
	l.Namespace = ReleaseNamespace
	res := l.Run([]string{chartDir}, vals)
	var msgs []string
	for _, e := range res.Errors {
		msgs = append(msgs, e.Error())
	}
	if res.TotalChartsLinted != 1 && len(msgs) == 0 {
		msgs = append(msgs, fmt.Sprintf("linted %d charts, want 1", res.TotalChartsLinted))
	}
	return msgs, nil
}

// Kustomize builds a kustomization as `kustomize build` does. The
// repository's deploy/ is copied into an in-memory filesystem at /deploy,
// the kustomization (and files) at /case, so a case refers to the overlays
// as ../deploy/kubernetes/... and nothing is written on disk.
func Kustomize(repoRoot, kustomization string, files map[string]string) (string, error) {
	fs := filesys.MakeFsInMemory()
	src := filepath.Join(repoRoot, "deploy")
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, p)
		if err != nil {
			return err
		}
		return fs.WriteFile("/"+filepath.ToSlash(rel), b)
	})
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	files = mapsWith(files, "kustomization.yaml", kustomization)
	for name, body := range files {
		if err := fs.WriteFile("/case/"+name, []byte(body)); err != nil {
			return "", err
		}
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, "/case")
	if err != nil {
		return "", fmt.Errorf("kustomize build:\n%s\n%w", kustomization, err)
	}
	b, err := m.AsYaml()
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

func mapsWith(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		out[mk] = mv
	}
	return out
}
