"""The one workload service (computes, networks, storage and their links) and what front ends hand it."""
