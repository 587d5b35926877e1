"""Test harness shared by every scenario test and tools/bench.py (not a test package).

- ``peers``: in-test origin servers (TCP/UDP echo, HTTP origin, bulk source), all joined on exit
- ``procs``: the real ``v2ray`` binary and ``python -m v2sync run`` as managed processes
- ``resources``: thread/fd/RSS readings for leak tests and the benchmark
"""
