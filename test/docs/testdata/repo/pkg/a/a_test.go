package a

import "testing"

func TestAlpha(t *testing.T)      {}
func TestAlphaBeta(t *testing.T)  {}
func Testlower(t *testing.T)      {}
func BenchmarkAlpha(b *testing.B) {}
func FuzzAlpha(f *testing.F)      {}

type s struct{}

func (s) TestMethod(t *testing.T) {}
