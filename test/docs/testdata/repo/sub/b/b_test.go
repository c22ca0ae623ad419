package b

import "testing"

func TestBeta(t *testing.T) {}
