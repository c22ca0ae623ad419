package helm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/cli/values"
	"sigs.k8s.io/yaml"
)

const repoRoot = "../.."

var chartDir = filepath.Join(repoRoot, "charts", "hostpath-csi")

// The overlays, as a case's kustomization (in /case) names them.
const (
	singleNode         = "../deploy/kubernetes/overlays/single-node"
	distributed        = "../deploy/kubernetes/overlays/distributed"
	nfs                = "../deploy/kubernetes/overlays/nfs"
	snapshotController = "../deploy/kubernetes/overlays/snapshot-controller"
	hostGuard          = "../deploy/kubernetes/components/host-guard"
	noInline           = "../deploy/kubernetes/components/no-inline"
)

// A chartCase is a helm install of the chart and the kustomize build that
// must make the same objects.
type chartCase struct {
	name string
	// The install: --set, --set-string, a values file (-f) given by its
	// text or its name, --skip-crds.
	set, setString []string
	valuesFile     string
	valuesFileName string
	skipCRDs       bool
	// The kustomization (at /case, beside files) of what it must equal.
	kustomization string
	files         map[string]string
}

func kustomization(body string) string {
	return "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + body
}

var chartCases = []chartCase{
	{
		name: "singleNode, the defaults",
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + "\n"),
	},
	{
		name: "distributed",
		set:  []string{"flavour=distributed"},
		kustomization: kustomization(`resources:
  - ` + distributed + `
  - ` + snapshotController + "\n"),
	},
	{
		name: "nfs",
		set:  []string{"flavour=nfs"},
		kustomization: kustomization(`resources:
  - ` + nfs + `
  - ` + snapshotController + "\n"),
	},
	{
		name:     "singleNode without snapshot-controller and its CRDs",
		set:      []string{"snapshotController.enabled=false"},
		skipCRDs: true,
		kustomization: kustomization(`resources:
  - ` + singleNode + "\n"),
	},
	{
		name: "singleNode with host-guard and no-inline",
		set:  []string{"hostpath.hostGuard=true", "hostpath.inline.enabled=false"},
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + `
components:
  - ` + hostGuard + `
  - ` + noInline + "\n"),
	},
	{
		name: "distributed with host-guard",
		set:  []string{"flavour=distributed", "hostpath.hostGuard=true"},
		kustomization: kustomization(`resources:
  - ` + distributed + `
  - ` + snapshotController + `
components:
  - ` + hostGuard + "\n"),
	},
	{
		// What docs/inline-volumes.md and docs/flags.md describe, each bound
		// set: kustomize users add the flags with a patch like this one.
		name: "singleNode with every inline bound",
		set: []string{
			"hostpath.inline.maxSize=2Gi", "hostpath.inline.defaultSize=128Mi",
			"hostpath.inline.maxShare=20", "hostpath.inline.maxCount=32",
			"hostpath.inline.maxSharePerNamespace=50", "hostpath.inline.maxCountPerNamespace=8",
			"hostpath.inline.allowedAttributes={size,mountPermissions}",
		},
		setString: []string{"hostpath.inline.mountPermissions=0750"},
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + `
patches:
  - target:
      kind: DaemonSet
      name: hostpath-csi
    patch: |-
      - op: test
        path: /spec/template/spec/containers/0/name
        value: hostpath-plugin
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-size=2Gi}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-default-size=128Mi}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-share=20}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-count=32}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-share-per-namespace=50}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-count-per-namespace=8}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--ephemeral-allowed-attributes=size,mountPermissions"}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-mount-permissions=0750}
`),
	},
	{
		// Numbers in a values file are float64 to Helm: printed as
		// integers all the same.
		name: "singleNode with inline bounds as numbers in a values file",
		valuesFile: `hostpath:
  inline:
    maxSize: 1073741824
    maxCount: 1000000
`,
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + `
patches:
  - target:
      kind: DaemonSet
      name: hostpath-csi
    patch: |-
      - {op: test, path: /spec/template/spec/containers/0/name, value: hostpath-plugin}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-size=1073741824}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-max-count=1000000}
`),
	},
	{
		name: "singleNode with an empty list of inline attributes",
		valuesFile: `hostpath:
  inline:
    allowedAttributes: []
`,
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + `
patches:
  - target:
      kind: DaemonSet
      name: hostpath-csi
    patch: |-
      - {op: test, path: /spec/template/spec/containers/0/name, value: hostpath-plugin}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ephemeral-allowed-attributes=}
`),
	},
	{
		// Images, the data directory, more classes, no default class: what
		// a values file of a user changes, and the kustomize way of each.
		name: "singleNode with my images, data directory and classes",
		valuesFile: `images:
  driver:
    repository: registry.example.com/hostpath-plugin
    tag: v0.2.0
  provisioner:
    tag: v6.2.0
hostpath:
  dataDir: /srv/hostpath-csi
  defaultStorageClass: ""
  storageClasses:
    - name: hostpath-csi
      volumeBindingMode: WaitForFirstConsumer
      reclaimPolicy: Delete
      allowVolumeExpansion: true
      parameters:
        mountPermissions: "0777"
    - name: hostpath-csi-image
      labels:
        example.com/tier: fast
      annotations:
        example.com/owner: storage-team
      volumeBindingMode: WaitForFirstConsumer
      reclaimPolicy: Retain
      allowVolumeExpansion: true
      parameters:
        layout: image
        csi.storage.k8s.io/fstype: xfs
  volumeSnapshotClasses:
    - name: hostpath-csi
      deletionPolicy: Delete
    - name: hostpath-csi-retain
      deletionPolicy: Retain
`,
		kustomization: kustomization(`resources:
  - ` + singleNode + `
  - ` + snapshotController + `
  - classes.yaml
images:
  - name: hostpath-csi/hostpath-plugin
    newName: registry.example.com/hostpath-plugin
    newTag: v0.2.0
  - name: registry.k8s.io/sig-storage/csi-provisioner
    newTag: v6.2.0
patches:
  - target:
      kind: StorageClass
      name: hostpath-csi
    patch: |-
      - {op: remove, path: /metadata/annotations}
  - target:
      kind: DaemonSet
      name: hostpath-csi
    patch: |-
      - {op: test, path: /spec/template/spec/containers/0/args/2, value: --state-dir=/var/lib/hostpath-csi/state}
      - {op: replace, path: /spec/template/spec/containers/0/args/2, value: --state-dir=/srv/hostpath-csi/state}
      - {op: test, path: /spec/template/spec/containers/0/args/3, value: --data-dir=/var/lib/hostpath-csi/data}
      - {op: replace, path: /spec/template/spec/containers/0/args/3, value: --data-dir=/srv/hostpath-csi/data}
      - {op: test, path: /spec/template/spec/containers/0/volumeMounts/2/name, value: storage}
      - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/2/mountPath, value: /srv/hostpath-csi}
      - {op: test, path: /spec/template/spec/volumes/4/name, value: storage}
      - {op: replace, path: /spec/template/spec/volumes/4/hostPath/path, value: /srv/hostpath-csi}
`),
		files: map[string]string{"classes.yaml": `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: hostpath-csi-image
  labels:
    example.com/tier: fast
  annotations:
    example.com/owner: storage-team
provisioner: hostpath-csi.github.io
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
allowVolumeExpansion: true
parameters:
  layout: image
  csi.storage.k8s.io/fstype: xfs
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: hostpath-csi-retain
driver: hostpath-csi.github.io
deletionPolicy: Retain
`},
	},
	{
		// The second release, beside a hostpath one that made the namespace
		// and runs snapshot-controller: what docs/install.md shows.
		name:           "nfs beside a hostpath release, on my server",
		skipCRDs:       true,
		valuesFileName: filepath.Join(repoRoot, "examples/helm/nfs-values.yaml"),
		kustomization: kustomization(`resources:
  - ` + nfs + `
patches:
  - patch: |-
      $patch: delete
      apiVersion: v1
      kind: Namespace
      metadata:
        name: hostpath-csi
  - target:
      kind: StorageClass
      name: hostpath-csi-nfs
    patch: |-
      - {op: replace, path: /parameters/server, value: 192.0.2.10}
      - {op: replace, path: /parameters/share, value: /srv/nfs}
`),
	},
	{
		name: "singleNode in another namespace, its controller too",
		set:  []string{"namespace.name=storage", "snapshotController.namespace=snapshots"},
		kustomization: kustomization(`resources:
  - single-node
  - snapshot-controller
`),
		files: map[string]string{
			// The bindings' subjects keep the base's namespace: kustomize
			// users patch them.
			"single-node/kustomization.yaml": kustomization(`namespace: storage
resources:
  - ../` + singleNode + `
patches:
  - target:
      kind: (Cluster)?RoleBinding
      name: hostpath-csi-.*
    patch: |-
      - {op: test, path: /subjects/0/name, value: hostpath-csi}
      - {op: replace, path: /subjects/0/namespace, value: storage}
`),
			"snapshot-controller/kustomization.yaml": kustomization(`namespace: snapshots
resources:
  - ../` + snapshotController + "\n"),
		},
	},
}

// An intendedDifference is a difference between helm's object and
// kustomize's that the chart means to have: in the objects of a kind, at a
// path, in the cases named (none: every case). Each must occur in each of
// its cases, so none outlives its reason.
type intendedDifference struct {
	cases      []string
	kind, path string
	reason     string
}

func (d intendedDifference) caseNames() []string {
	if len(d.cases) > 0 {
		return d.cases
	}
	var all []string
	for _, c := range chartCases {
		all = append(all, c.name)
	}
	return all
}

func (d intendedDifference) in(name string) bool { return slices.Contains(d.caseNames(), name) }

// The cases with components/host-guard.
var withHostGuard = []string{"singleNode with host-guard and no-inline", "distributed with host-guard"}

// intendedDifferences are the only differences but Helm's labels
// (HelmLabels): everything else the chart renders is what kustomize builds.
var intendedDifferences = []intendedDifference{
	{
		kind: "VolumeSnapshotClass", path: ".metadata.namespace",
		reason: "kustomize's namespace transformer does not know that the kind (a CRD's) is cluster-scoped and " +
			"gives it the kustomization's namespace, which the API server drops; the chart renders none",
	},
	{
		cases: []string{"distributed", "distributed with host-guard"}, kind: "DaemonSet", path: ".spec.template.spec.containers (order)",
		reason: "kustomize's strategic merge moves the containers overlays/distributed patches (csi-snapshotter, csi-resizer) " +
			"ahead of the others; the chart keeps the base's order, the driver first. The order changes nothing here: " +
			"kubectl's default container is the annotation's, and each sidecar waits for the driver's socket",
	},
	{
		cases: withHostGuard, kind: "DaemonSet", path: ".spec.template.spec.containers[name=hostpath-plugin].env (order)",
		reason: "kustomize's strategic merge puts the variable components/host-guard sets first; the chart keeps the base's " +
			"order (no variable refers to another, so the order changes nothing)",
	},
	{
		cases: withHostGuard, kind: "DaemonSet", path: ".spec.template.spec.containers[name=hostpath-plugin].volumeMounts (order)",
		reason: "kustomize's strategic merge puts the mount components/host-guard adds first; the chart appends it " +
			"(mounts at disjoint paths: the order changes nothing)",
	},
	{
		cases: withHostGuard, kind: "DaemonSet", path: ".spec.template.spec.volumes (order)",
		reason: "kustomize's strategic merge puts the volume components/host-guard adds first; the chart appends it",
	},
}

// A helmOnlyObject is an object only the chart renders, in the cases named.
type helmOnlyObject struct {
	cases  []string
	key    Key
	reason string
}

func (h helmOnlyObject) in(name string) bool { return slices.Contains(h.cases, name) }

var helmOnly = []helmOnlyObject{
	{
		cases: []string{"distributed", "distributed with host-guard"},
		key:   Key{Kind: "Secret", Namespace: "hostpath-csi", Name: "hostpath-csi-transfer"},
		reason: "the transfer key: Helm makes a random one at install and keeps it (lookup) at upgrades; kustomize " +
			"cannot make a secret value, so with kubectl apply -k deploy/kubernetes/transfer-keys.sh create makes it",
	},
}

func (c chartCase) values(t *testing.T) values.Options {
	opts := values.Options{Values: c.set, StringValues: c.setString}
	if c.valuesFile != "" {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(c.valuesFile), 0o644); err != nil {
			t.Fatal(err)
		}
		opts.ValueFiles = []string{f}
	}
	if c.valuesFileName != "" {
		opts.ValueFiles = append(opts.ValueFiles, c.valuesFileName)
	}
	return opts
}

func chartVersion(t *testing.T) (name, version string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct{ Name, Version string }
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.Name, c.Version
}

func TestChartRendersWhatKustomizeBuilds(t *testing.T) {
	name, version := chartVersion(t)
	labels := HelmLabels(name, version, ReleaseName)
	type occurrence struct {
		caseName string
		index    int // in intendedDifferences
	}
	seen, seenHelmOnly := map[occurrence]bool{}, map[occurrence]bool{}
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			manifest, err := Install(chartDir, InstallOptions{Values: c.values(t), SkipCRDs: c.skipCRDs})
			if err != nil {
				t.Fatal(err)
			}
			helmObjs, err := ParseObjects(manifest)
			if err != nil {
				t.Fatalf("helm's manifest: %v", err)
			}
			built, err := Kustomize(repoRoot, c.kustomization, c.files)
			if err != nil {
				t.Fatal(err)
			}
			kustoObjs, err := ParseObjects(built)
			if err != nil {
				t.Fatalf("kustomize's output: %v", err)
			}
			for _, k := range helmObjs.Keys() {
				o := helmObjs[k]
				missing := StripHelmLabels(o, labels)
				if k.Kind != "CustomResourceDefinition" && len(missing) > 0 {
					// crds/ is not templated; everything else is labelled.
					t.Errorf("%s: no label %s", k, strings.Join(missing, ", "))
				}
				want, ok := kustoObjs[k]
				if !ok {
					if i := slices.IndexFunc(helmOnly, func(h helmOnlyObject) bool { return h.key == k && h.in(c.name) }); i >= 0 {
						seenHelmOnly[occurrence{c.name, i}] = true
					} else {
						t.Errorf("%s: helm renders it, kustomize does not", k)
					}
					continue
				}
			diffs:
				for _, d := range Diff(o, want) {
					for i, in := range intendedDifferences {
						if in.kind == k.Kind && in.path == d.Path && in.in(c.name) {
							seen[occurrence{c.name, i}] = true
							continue diffs
						}
					}
					t.Errorf("%s: %s", k, d)
				}
			}
			for _, k := range kustoObjs.Keys() {
				if _, ok := helmObjs[k]; !ok {
					t.Errorf("%s: kustomize builds it, helm does not render it", k)
				}
			}
		})
	}
	for i, h := range helmOnly {
		for _, c := range h.cases {
			if !seenHelmOnly[occurrence{c, i}] {
				t.Errorf("%s is not rendered in %q: remove it from helmOnly there (%s)", h.key, c, h.reason)
			}
		}
	}
	for i, in := range intendedDifferences {
		for _, c := range in.caseNames() {
			if !seen[occurrence{c, i}] {
				t.Errorf("intended difference %s %s does not occur in %q: remove it there (%s)", in.kind, in.path, c, in.reason)
			}
		}
	}
}

// helm lint --strict passes with every case's values.
func TestChartLintsStrict(t *testing.T) {
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			msgs, err := Lint(chartDir, c.values(t))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				t.Error(m)
			}
		})
	}
}

// Values that make no sense are refused at install with a message saying
// why: by values.schema.json, and by the templates themselves (with
// --skip-schema-validation, and for what a schema cannot say). helm lint
// reports what the schema refuses, but not the templates' refusals: its
// engine runs in lint mode, where fail and required only log.
func TestChartRefusesWhatMakesNoSense(t *testing.T) {
	for _, tc := range []struct {
		name       string
		set        []string
		setString  []string
		skipSchema bool
		wantErr    string
	}{
		{name: "an unknown flavour", set: []string{"flavour=multiNode"},
			wantErr: "at '/flavour': value must be one of 'singleNode', 'distributed', 'nfs'"},
		{name: "an unknown flavour, unchecked by the schema", set: []string{"flavour=multiNode"}, skipSchema: true,
			wantErr: `flavour "multiNode": it is singleNode, distributed or nfs`},
		{name: "a misspelt value", set: []string{"flavor=nfs"},
			wantErr: "additional properties 'flavor' not allowed"},
		{name: "a misspelt inline bound", set: []string{"hostpath.inline.maxsize=2Gi"},
			wantErr: "additional properties 'maxsize' not allowed"},
		{name: "a mode as a number", set: []string{"hostpath.inline.mountPermissions=750"},
			wantErr: "at '/hostpath/inline/mountPermissions': got number, want null or string"},
		{name: "a share past 100%", set: []string{"hostpath.inline.maxShare=150"},
			wantErr: "at '/hostpath/inline/maxShare': maximum: got 150, want 100"},
		{name: "an attribute pods cannot be allowed", set: []string{"hostpath.inline.allowedAttributes={size,layout}"},
			wantErr: "at '/hostpath/inline/allowedAttributes/1': value must be one of 'size', 'mountPermissions'"},
		{name: "a relative data directory", set: []string{"hostpath.dataDir=var/lib/x"},
			wantErr: "at '/hostpath/dataDir'"},
		{name: "a default class that is not listed", set: []string{"hostpath.defaultStorageClass=fast"},
			wantErr: `defaultStorageClass "fast" is not one of the classes listed (hostpath-csi)`},
		{name: "a default snapshot class that is not listed", set: []string{"flavour=nfs", "nfs.defaultVolumeSnapshotClass=hostpath-csi"},
			wantErr: `defaultVolumeSnapshotClass "hostpath-csi" is not one of the classes listed (hostpath-csi-nfs)`},
		{name: "host-guard on nfs", set: []string{"flavour=nfs", "hostpath.hostGuard=true"},
			wantErr: "hostpath.hostGuard is for the hostpath flavours"},
		{name: "a class without a name", set: []string{"hostpath.storageClasses[0].reclaimPolicy=Retain"},
			wantErr: "every storage class needs a name"},
		{name: "an image without a tag", set: []string{"images.driver.tag=null"},
			wantErr: "image hostpath-csi/hostpath-plugin needs a tag"},
		// A class parameter given as a number would be rendered in another
		// base (0750 is read as octal: "488") or notation (1e+09).
		{name: "a class parameter as a number", set: []string{"hostpath.storageClasses[0].name=hostpath-csi", "hostpath.storageClasses[0].parameters.mountPermissions=750"},
			wantErr: "at '/hostpath/storageClasses/0/parameters/mountPermissions': got number, want string"},
		// Names and images are written unquoted into the objects: a value
		// that is no name would add YAML of its own.
		{name: "a class name that adds YAML", setString: []string{"hostpath.storageClasses[0].name=evil\n  namespace: injected"},
			wantErr: "at '/hostpath/storageClasses/0/name'"},
		{name: "an image tag that adds YAML", setString: []string{"images.driver.tag=v1\n          injected: true"},
			wantErr: "at '/images/driver/tag'"},
		{name: "the release in the namespace the chart makes", set: []string{"namespace.name=default"},
			wantErr: "the release's namespace is default, which the chart makes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Install(chartDir, InstallOptions{
				Values:               values.Options{Values: tc.set, StringValues: tc.setString},
				SkipSchemaValidation: tc.skipSchema,
			})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("install: %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}
