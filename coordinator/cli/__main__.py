"""`python -m pipeedge.coordinator.cli` runs `pipeedge-coord`."""

from pipeedge.coordinator.cli import main

main()
