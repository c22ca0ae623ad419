// Package size parses byte sizes written as Kubernetes writes quantities
// of storage: a whole number with an optional binary (Ki, Mi, Gi, Ti, Pi,
// Ei) or decimal (k, M, G, T, P, E) suffix.
package size

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var units = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"Pi", 1 << 50}, {"Ei", 1 << 60},
	{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15}, {"E", 1e18},
}

// Parse returns the number of bytes s stands for. Fractions, signs,
// exponents and sizes past 2^63-1 bytes are errors that say so.
func Parse(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	if num == "" || strings.IndexFunc(num, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("size %.40q is not a whole number of bytes with an optional suffix (Ki, Mi, Gi, Ti or k, M, G, T; examples: 1Gi, 500Mi, 1048576)", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %.40q is too large", s)
	}
	return n * mult, nil
}
