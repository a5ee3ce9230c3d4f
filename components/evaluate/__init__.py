"""The evaluate stage. This package root stays free of Ray and torch imports (pure scoring lives here)."""
