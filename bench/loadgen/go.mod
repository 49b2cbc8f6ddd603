module h2ogpt-platform/bench/loadgen

go 1.22
