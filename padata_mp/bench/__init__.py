"""``padata-mp bench``: how a kernel job scales with processes, against the memory's limit, a native
reference and the Python peers, in the kernel series' table format; ``padata-mp compare``.

| module | what |
|---|---|
| workloads | the registry of jobs: name -> description, default size, how to make its starting state |
| stats | medians, their 95% intervals, ratios and whether they are significant |
| results | typed rows (plain loop, engine, native, peers), warnings, the JSON schema |
| native | the native reference program and the store ceiling of the C library |
| peers | Pool.map, ProcessPoolExecutor, ThreadPoolExecutor and joblib on the same chunks |
| runner | one run: set-up, phases, rounds, verify |
| report | the table, CSV and the plot |
| compare | two results, configuration by configuration |
"""
