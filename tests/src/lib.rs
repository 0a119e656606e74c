//! e2e test helpers live in tests/tests/common.
