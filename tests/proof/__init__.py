"""Proof suites: crashes (SIGKILL at random points), faults between the daemon and its peers, hostile input."""
