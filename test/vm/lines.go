package vm

import (
	"bytes"
	"sync"
)

// LineWriter is an io.Writer, for Config.Serial, that hands each complete
// line (without its newline) to a function as soon as it arrives. What
// follows the last newline is held until more comes; if the machine dies
// first, that piece of a line is never handed on, since a line cut short
// by a power cut says nothing reliable.
type LineWriter struct {
	mu   sync.Mutex
	fn   func(line string)
	part []byte
}

// NewLineWriter calls fn for each line, one at a time, in order.
func NewLineWriter(fn func(line string)) *LineWriter { return &LineWriter{fn: fn} }

func (w *LineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.part = append(w.part, p...)
			return n, nil
		}
		line := append(w.part, p[:i]...)
		w.part = nil
		w.fn(string(bytes.TrimSuffix(line, []byte("\r"))))
		p = p[i+1:]
	}
}

// Partial is what arrived after the last newline.
func (w *LineWriter) Partial() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.part)
}
