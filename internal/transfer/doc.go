// Package transfer is the channel between the driver's node plugins: one
// node fetches a snapshot's or a volume's bytes from the node that holds
// them, so that a restore works on any node. What the bytes are (a tree
// serialisation) is not this package's business; it moves opaque bytes,
// one request and one streamed answer per connection.
//
// # Threat model
//
// A node plugin's transfer port is reachable from the pod network and from
// anything that can reach the node. Only the driver's own node plugins may
// fetch: anyone else, including a pod on the pod network that can connect,
// record and replay traffic, or sit in the middle and relay it, must get no
// byte of an answer, and the handler must not even be called for it.
// Possession of the shared key (below) is what makes a peer one of the
// driver's node plugins; a holder of the key is trusted completely, as is
// the node's root (who can read the key from the Secret volume anyway);
// so one node's root can fetch any other node's volumes, the price of one
// cluster-wide key. The bytes are encrypted on the wire, and a client sends
// its request only after the server proved itself, so a fake server learns
// not even what was asked for. Denial of service by a peer that can reach the port is bounded, not
// prevented: connections that have not proven themselves get
// HandshakeTimeout (10 s) in all, and at most MaxUnauthenticated (64) of
// them are in flight; more are closed at once.
//
// # How a connection is authenticated
//
// Every process makes an ephemeral self-signed ECDSA P-256 certificate at
// start, so there is no CA to manage. The TLS (1.3 only) client does not
// verify the server's certificate; instead both sides prove they hold a
// key by channel binding: after the handshake each computes
//
//	ekm = ExportKeyingMaterial("EXPORTER-hostpath-csi-transfer-v1", nil, 32)
//
// which is unique to that TLS session. The client sends its key id and
// HMAC-SHA256(key, "client" || ekm); the server looks the key up by id,
// checks the HMAC in constant time and only then answers
// HMAC-SHA256(key, "server" || ekm), which the client checks before it
// trusts any byte the server sends. A relay in the middle has one TLS
// session with each side, so two different ekm values, and cannot turn
// the proof it receives into one the other side accepts; a recorded
// session replayed to a server fails, since the server's randomness (and
// so the ekm) differs; a fake server learns only a proof useless on any
// other session, and cannot answer it. Refusals are logged (klog, with the
// remote address and the reason, never a key).
//
// # Keys
//
// The key file holds one key per line, "<key-id> <base64 secret>", with at
// least 32 random bytes per secret; lines starting with '#' are comments.
// Make a key with
//
//	echo "k$(date +%Y%m%d) $(head -c 32 /dev/urandom | base64)"
//
// Store the file in a Kubernetes Secret mounted into every node plugin
// (readable by the plugin only), for example
//
//	kubectl -n kube-system create secret generic hostpath-csi-transfer-keys --from-file=keys=./keys
//
// and keep no other copy.
// The first key of the file is the one a process proves itself with; every
// key listed is accepted from peers. The file is checked (one stat) on each
// connection and re-read when it changed, which is how Kubernetes updates a
// mounted Secret (by swapping a symlink), so a rotation needs no restart:
//
//  1. add the new key second, and wait until every node has the new file
//     (the kubelet's sync period, a minute or so);
//  2. move it first, and wait again: everyone now proves with the new key
//     and still accepts the old one;
//  3. drop the old key.
//
// A changed key file that is not valid makes the process refuse every
// transfer (both ways) until it is fixed: it fails closed, rather than keep
// accepting a key meant to be dropped.
//
// # Protocol and limits
//
// After the proofs the client sends one length-prefixed JSON Request. The
// server's Handler answers with a header (success, or a gRPC status code
// and message, and JSON meta), then the body in data frames and an end
// frame that says whether the handler succeeded. A body without its end
// frame, because the server died or the connection broke, reads as an
// error, never as a complete body.
//
// Each side limits the transfers it runs at once (MaxTransfers; extra ones
// wait for a slot) and the bytes per second over all of them
// (RateBytesPerSec, a token bucket of golang.org/x/time/rate): the server
// over what it sends, the client over what it receives. A peer that
// vanished is noticed by TCP keep-alive and by IdleTimeout: a read (on
// the client) or a write (on the server) that makes no progress for that
// long fails, naming the peer. A rate-limited sender sends small frames
// often (at most an eighth of a second's worth of bytes each), and a
// request waiting for a server's slot gets keepalive frames, so neither is
// taken for a dead peer; a Handler that sends nothing for IdleTimeout is.
package transfer
