#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (run from anywhere).

token_response seeds: real provider answer shapes, laid out as fuzz_targets/token_response.rs reads them:
status (u16 BE), retry-after length+1 (0: none) and text, default_ttl
(u32 BE), seconds after 2026-01-01 (u32 BE), body. config seeds: TOML, then
NUL-separated NAME=VALUE environment variables.
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")
ROOT = os.path.join(HERE, "..", "..")


def write(target, data):
    path = os.path.join(CORPUS, target)
    os.makedirs(path, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def answer(status, body, retry_after=None, ttl=3600, at=28_000_000):
    ra = b"\x00" if retry_after is None else bytes([len(retry_after) + 1]) + retry_after.encode()
    if isinstance(body, str):
        body = body.encode()
    write("token_response", struct.pack(">H", status) + ra + struct.pack(">II", ttl, at) + body)


# Google: no refresh_token in the answer (keep the old one).
answer(200, '{"access_token":"ya29.a0AfH6SMBx","expires_in":3599,"scope":"https://www.googleapis.com/auth/drive.readonly openid","token_type":"Bearer","id_token":"eyJhbGciOiJSUzI1NiJ9.e30.sig"}')
# Microsoft: rotated refresh token, ext_expires_in, expires_in as a number.
answer(200, '{"token_type":"Bearer","scope":"User.Read Mail.Read","expires_in":4419,"ext_expires_in":4419,"access_token":"eyJ0eXAiOiJKV1Qi","refresh_token":"0.AAAA-new"}')
# Azure AD v1: numbers as strings, expires_on as Unix seconds.
answer(200, '{"token_type":"Bearer","expires_in":"86399","ext_expires_in":"86399","expires_on":"1767312000","resource":"https://graph.microsoft.com","access_token":"eyJ0eXAi","refresh_token":"AQABAAAA"}')
# Salesforce: no expires_in (default_ttl applies), issued_at in milliseconds.
answer(200, '{"access_token":"00Dxx0000001gPL!AR8AQJXg","signature":"CMJ4l+CCaPQiKjoOEwEig9H4wqhpuLSk4J2urAe+fVg=","scope":"refresh_token api","instance_url":"https://yourInstance.salesforce.com","id":"https://login.salesforce.com/id/00Dxx/005xx","token_type":"Bearer","issued_at":"1278448384422"}', ttl=7200)
# Slack with rotation; and Slack's ok:false error with HTTP 200.
answer(200, '{"ok":true,"access_token":"xoxe.xoxp-1-Mi0y","token_type":"user","refresh_token":"xoxe-1-My0x","expires_in":43200,"team":{"id":"T1"}}')
answer(200, '{"ok":false,"error":"invalid_refresh_token"}')
# Error body with HTTP 200 (bad_refresh_token) and nested errors.
answer(200, '{"error":"bad_refresh_token","error_description":"The refresh token is invalid"}')
answer(400, '{"error":{"code":"invalid_grant","message":"Token has been expired or revoked."}}')
# invalid_grant on 400, 401 and 403 (Atlassian), with error_description.
answer(400, '{"error":"invalid_grant","error_description":"Token has been expired or revoked."}')
answer(401, '{"error":"invalid_grant","error_description":"AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.\\r\\nTrace ID: 1\\r\\n","error_codes":[70008],"timestamp":"2026-11-24 10:00:00Z"}')
answer(403, '{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}')
# invalid_client / unauthorized_client.
answer(401, '{"error":"invalid_client","error_description":"Client authentication failed"}')
answer(400, '{"error":"unauthorized_client"}')
# 429 with Retry-After as seconds and as an HTTP date; 503 with Retry-After.
answer(429, '{"error":"rate_limit_exceeded"}', retry_after="120")
answer(429, "", retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
answer(429, "Too Many Requests", retry_after="1.5")
answer(503, '{"error":"temporarily_unavailable"}', retry_after="30")
# HTML error page, gateway 502, empty bodies, truncated JSON.
answer(502, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
answer(200, "<!DOCTYPE html><html><body>Sign in</body></html>")
answer(200, "")
answer(500, "")
answer(200, '{"access_token":"ya29.a0","expires_in":35')
answer(302, "")
# expires_in huge, negative, zero, fractional, a string that is not a number.
answer(200, '{"access_token":"a","expires_in":99999999999999999999999}')
answer(200, '{"access_token":"a","expires_in":-3600,"refresh_token":"r"}')
answer(200, '{"access_token":"a","expires_in":0}')
answer(200, '{"access_token":"a","expires_in":3599.7,"token_type":"bearer"}')
answer(200, '{"access_token":"a","expires_in":"soon","token_type":"mac"}')
answer(200, '{"access_token":"a","expires_at":"2026-11-24T11:00:00Z","refresh_token_expires_in":15897600}')
answer(200, '{"access_token":"a","expires_at":1767312000000,"x_refresh_token_expires_in":"8726400"}')
# GitHub App user tokens; scope as an array; wrong types.
answer(200, '{"access_token":"ghu_16C7e42F","expires_in":28800,"refresh_token":"ghr_1B4a2e77","refresh_token_expires_in":15811200,"scope":"","token_type":"bearer"}')
answer(200, '{"access_token":"a","scope":["read","write"],"refresh_token":42,"token_type":null}')
answer(200, '{"access_token":123}')
answer(200, '["access_token"]')
answer(200, '"access_token"')
answer(201, '\ufeff{"access_token":"a"}')

with open(os.path.join(ROOT, "thermos.example.toml"), "rb") as f:
    write("config", f.read())
provider = b'''[[provider]]
slug = "google"
token_url = "https://oauth2.googleapis.com/token"
client_id = "123.apps.googleusercontent.com"
client_secret_env = "GOOGLE_CLIENT_SECRET"
auth_method = "client_secret_post"
scopes = ["openid", "email"]
extra_params = { access_type = "offline" }
default_ttl = "1h"
max_concurrency = 8
rate_limit_per_second = 10

[[provider]]
slug = "local"
token_url = "http://127.0.0.1:9000/token"
client_id = "local"
auth_method = "none"
'''
write("config", provider + b"\0GOOGLE_CLIENT_SECRET=GOCSPXsecretvalue1\0THERMOS_REFRESH__MARGIN=10m\0THERMOS_LIMITS__MAX_BODY_BYTES=65536")
write("config", b'''[server]
listen = "0.0.0.0:8080"
public_url = "https://thermos.example.com/base"

[database]
url = "postgres://thermos:pw@db.internal/thermos"
max_connections = 4
acquire_timeout = "5s"
schema = "thermos"

[refresh]
margin = "1h 30m"
max_retries = 0
backoff_initial = "1s"
backoff_max = "1000y"
failure_threshold = 1.0

[alerts]
webhook_url = "https://hooks.slack.com/services/T0/B0/XXXX"
format = "json"
window = "1s"

[runs]
sweep_every = "1m"

[limits]
max_connections_per_project = 10
''')
write("config", b"[refresh]\nmargin = 5\nmax_retries = -1\n\0THERMOS_REFRESH__BACKOFF_MAX=0s\0THERMOS_PROVIDER__SLUG=x\0THERMOS_NOPE__KEY=1")
