"""Found by an adversarial review: each test is a way a careful, hostile user
broke the tool, and now does not."""
from __future__ import annotations

import pytest
from proxy import silent_server
from test_reproduce_run import reproduce


def test_a_silent_server_with_a_password_in_its_uri_is_detected(capsys, monkeypatch):
    with silent_server() as (url, accepted):
        with_password = url.replace('http://', 'http://alice:s3cret@')
        monkeypatch.setenv('MLFLOW_TRACKING_URI', with_password)
        monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')
        code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
        connections = accepted[0]
    masked = url.replace('http://', 'http://***@')
    assert (code, out) == (2, '')
    assert err == (f'reproduce_run: error: the tracking server {masked} does not answer (no '
                   f'response within 10 s)\n')
    assert connections == 1  # the probe reached the server, without the password in its host


@pytest.mark.parametrize('uri', [
    pytest.param('http://alice:s3cret@127.0.0.1', id='http-no-port'),
    pytest.param('http://alice:s3cret@127.0.0.1/', id='http-no-port-slash'),
])
def test_a_password_in_a_tracking_uri_without_port_is_not_taken_for_a_port(capsys, monkeypatch,
                                                                           uri):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    code, out, err = reproduce(capsys, '--run_id', 'a' * 32)
    assert (code, out) == (2, '')
    assert 's3cret' not in err
    assert err.startswith(f'reproduce_run: error: cannot read run {"a" * 32} from '
                          f'http://***@127.0.0.1')
    assert 'does not answer (Connection refused)' in err
