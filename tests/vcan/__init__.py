"""Tests that need a real SocketCAN vcan0 (run them in scripts/vcan-vm on a host without it)."""
