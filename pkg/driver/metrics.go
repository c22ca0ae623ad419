package driver

import (
	"net/http"
	"time"

	csimetrics "github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// metrics are what /metrics serves. Counts that state already knows
// (volumes, snapshots, bytes provisioned) are read from it at each scrape,
// so they can never drift from the truth; events (copies, reconcile
// actions, calls) are counted as they happen.
type metrics struct {
	// calls: csi_plugin_operations_seconds{driver_name, method_name,
	// grpc_status_code}, the histogram every CSI driver and sidecar
	// exposes, so dashboards carry over.
	calls    csimetrics.CSIMetricsManager
	registry *prometheus.Registry

	copySeconds *prometheus.HistogramVec
	copyBytes   *prometheus.CounterVec
	reconciled  *prometheus.CounterVec
}

const metricsNamespace = "hostpath_csi"

func newMetrics(driverName string) *metrics {
	m := &metrics{
		calls:    csimetrics.NewCSIMetricsManagerForPlugin(driverName),
		registry: prometheus.NewRegistry(),
		copySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "copy_duration_seconds",
			Help:    "Duration of the copies behind snapshots, restores and clones, until the copy is durable, by operation and mechanism.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600},
		}, []string{"operation", "mechanism"}),
		copyBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "copied_bytes_total",
			Help: "Logical bytes of the files copied by snapshots, restores and clones, by operation and mechanism (a btrfs snapshot copies none).",
		}, []string{"operation", "mechanism"}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "reconcile_actions_total",
			Help: "What start-up reconciliation did to bring the disk and the records in line after a crash, by action.",
		}, []string{"action"}),
	}
	m.registry.MustRegister(m.copySeconds, m.copyBytes, m.reconciled)
	return m
}

// copied records one finished copy.
func (m *metrics) copied(operation, mechanism string, bytes int64, took time.Duration) {
	m.copySeconds.WithLabelValues(operation, mechanism).Observe(took.Seconds())
	m.copyBytes.WithLabelValues(operation, mechanism).Add(float64(bytes))
}

// reconcileAction counts one thing start-up put right.
func (m *metrics) reconcileAction(action string) { m.reconciled.WithLabelValues(action).Inc() }

// Handler serves every metric of the driver in the Prometheus text format.
func (d *Driver) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{d.metrics.calls.GetRegistry(), d.metrics.registry}, promhttp.HandlerOpts{
		ErrorLog: promLogger{}, ErrorHandling: promhttp.ContinueOnError})
}

type promLogger struct{}

func (promLogger) Println(v ...any) { klog.ErrorS(nil, "Serving metrics", "error", v) }

// stateCollector reads the gauges from state at each scrape.
type stateCollector struct{ d *Driver }

var (
	descVolumes = prometheus.NewDesc(metricsNamespace+"_volumes", "Volumes on record on this node, by phase (creating and deleting are operations in progress or cut short) and kind (persistent or inline).",
		[]string{"phase", "kind"}, nil)
	descSnapshots = prometheus.NewDesc(metricsNamespace+"_snapshots", "Snapshots on record on this node, by phase.",
		[]string{"phase"}, nil)
	descProvisioned = prometheus.NewDesc(metricsNamespace+"_provisioned_bytes", "Sum of the capacities of the ready volumes on this node.",
		nil, nil)
	descUsed = prometheus.NewDesc(metricsNamespace+"_used_bytes", "Sum of the bytes used by the volumes on this node, as last measured by NodeGetVolumeStats (the kubelet asks every minute for each mounted volume).",
		nil, nil)
	descFS = prometheus.NewDesc(metricsNamespace+"_data_filesystem_bytes", "Size of the filesystem holding the data directory, and what an unprivileged writer can still use of it.",
		[]string{"kind"}, nil)
	descCopies = prometheus.NewDesc(metricsNamespace+"_copies_in_progress", "Snapshot, restore, clone and group snapshot copies running now.",
		nil, nil)
	descPending = prometheus.NewDesc(metricsNamespace+"_reconcile_pending", "Things start-up could not reconcile and retries in the background (see NodeGetStorageHealth and the log).",
		nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVolumes, descSnapshots, descProvisioned, descUsed, descFS, descCopies, descPending} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	type key struct{ phase, kind string }
	vols := map[key]int{}
	var provisioned int64
	if all, _, err := d.store.ListVolumes("", 0, nil); err == nil {
		for _, v := range all {
			kind := "persistent"
			if v.Ephemeral {
				kind = "inline"
			}
			vols[key{string(v.Phase), kind}]++
			if v.Phase == state.PhaseReady {
				provisioned += v.CapacityBytes
			}
		}
	} else {
		ch <- prometheus.NewInvalidMetric(descVolumes, err)
	}
	for _, phase := range []state.Phase{state.PhaseCreating, state.PhaseReady, state.PhaseDeleting} {
		for _, kind := range []string{"persistent", "inline"} {
			ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(vols[key{string(phase), kind}]), string(phase), kind)
		}
	}
	snaps := map[state.Phase]int{}
	if all, _, err := d.store.ListSnapshots("", 0, nil); err == nil {
		for _, s := range all {
			snaps[s.Phase]++
		}
	} else {
		ch <- prometheus.NewInvalidMetric(descSnapshots, err)
	}
	for _, phase := range []state.Phase{state.PhaseCreating, state.PhaseReady, state.PhaseDeleting} {
		ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.GaugeValue, float64(snaps[phase]), string(phase))
	}
	ch <- prometheus.MustNewConstMetric(descProvisioned, prometheus.GaugeValue, float64(provisioned))
	ch <- prometheus.MustNewConstMetric(descUsed, prometheus.GaugeValue, float64(d.hostpath.usage.total()))
	if st, err := d.hostpath.vols.Stats(); err == nil {
		ch <- prometheus.MustNewConstMetric(descFS, prometheus.GaugeValue, float64(st.TotalBytes), "total")
		ch <- prometheus.MustNewConstMetric(descFS, prometheus.GaugeValue, float64(st.AvailableBytes), "available")
	}
	ch <- prometheus.MustNewConstMetric(descCopies, prometheus.GaugeValue, float64(d.jobs.running()))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(len(d.pending.list())))
}
