package transfer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"
)

// The wire, after the TLS 1.3 handshake:
//
//	client → server  proof:   version(1)=1, len(id)(1), id, HMAC-SHA256(key, "client" || ekm)(32)
//	server → client  verdict: 0 and HMAC-SHA256(key, "server" || ekm)(32), or 1 (refused) and close
//	client → server  request: length(4) and JSON Request
//	server → client  frames:  type(1), length(4), payload
//
// Frames: any number of keepalives (while the request waits for a slot),
// one header (JSON answerHeader; if not ok it is the last frame), then data
// frames and one end frame (JSON endStatus). A stream without its end
// frame is broken, whatever the reason.
const (
	ekmLabel     = "EXPORTER-hostpath-csi-transfer-v1"
	ekmLen       = 32
	macLen       = sha256.Size
	proofVersion = 1

	verdictOK      = 0
	verdictRefused = 1

	frameKeepalive = 1
	frameHeader    = 2
	frameData      = 3
	frameEnd       = 4

	frameHdrLen = 5
	// maxData is the largest data frame; writes are cut to it (or less, see
	// chunkFor).
	maxData = 128 << 10
	// maxRequest bounds the request a server reads from a peer, maxHeader
	// the header (with meta) and end frame a client reads.
	maxRequest = 64 << 10
	maxHeader  = 1 << 20
)

func proofMAC(secret []byte, role string, ekm []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(role))
	m.Write(ekm)
	return m.Sum(nil)
}

func exportEKM(c *tls.Conn) ([]byte, error) {
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("TLS version %#x, want TLS 1.3", cs.Version)
	}
	ekm, err := cs.ExportKeyingMaterial(ekmLabel, nil, ekmLen)
	if err != nil {
		return nil, fmt.Errorf("export keying material: %w", err)
	}
	return ekm, nil
}

// answerHeader is the header frame's payload.
type answerHeader struct {
	OK      bool            `json:"ok"`
	Code    uint32          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Meta    json.RawMessage `json:"meta,omitempty"`
}

// endStatus is the end frame's payload.
type endStatus struct {
	OK      bool   `json:"ok"`
	Code    uint32 `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

func putFrameHdr(b []byte, typ byte, n int) {
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:frameHdrLen], uint32(n))
}

// writeFrame sends one frame in one Write (so in as few TLS records as the
// payload allows).
func writeFrame(w io.Writer, buf []byte, typ byte, payload []byte) ([]byte, error) {
	need := frameHdrLen + len(payload)
	if cap(buf) < need {
		buf = make([]byte, need)
	}
	buf = buf[:need]
	putFrameHdr(buf, typ, len(payload))
	copy(buf[frameHdrLen:], payload)
	_, err := w.Write(buf)
	return buf, err
}

func readFrameHdr(r io.Reader) (typ byte, n int, err error) {
	var h [frameHdrLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	return h[0], int(binary.BigEndian.Uint32(h[1:])), nil
}

// readSized reads a 4-byte length and that many bytes, at most limit.
func readSized(r io.Reader, limit int) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > uint32(limit) {
		return nil, fmt.Errorf("message of %d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeSized(w io.Writer, p []byte) error {
	b := make([]byte, 4+len(p))
	binary.BigEndian.PutUint32(b, uint32(len(p)))
	copy(b[4:], p)
	_, err := w.Write(b)
	return err
}

// noEOF turns an end of file where more was due into io.ErrUnexpectedEOF,
// so that no broken stream ever reads as a complete one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ephemeralCert makes a self-signed ECDSA P-256 certificate. Nobody
// verifies it: peers authenticate by the key proof bound to the TLS session
// (see the package comment); the certificate only lets TLS run.
func ephemeralCert() (tls.Certificate, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate transfer TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("transfer TLS certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "hostpath-csi-transfer"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create transfer TLS certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

func serverTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
}

func clientTLSConfig() *tls.Config {
	return &tls.Config{
		// The server's certificate is ephemeral and unverified on purpose:
		// the server proves itself with the shared key over the exported
		// keying material of this very session, which a relay cannot
		// forward (see the package comment).
		InsecureSkipVerify: true, //nolint:gosec // authenticated by channel binding
		MinVersion:         tls.VersionTLS13,
		MaxVersion:         tls.VersionTLS13,
		ServerName:         "hostpath-csi-transfer",
	}
}
