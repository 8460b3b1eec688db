// Helpers for the soak and fault tests: the HTTP address a ServerProcess
// logged, a blocking HTTP/1.1 GET, Prometheus counter lookup, VmRSS.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>

#include "tests/e2e/server_process.h"

namespace gdnserve::soak {

// A free loopback TCP port (bound and released: a small race, fine for
// tests). gdnserve's --http-port 0 means "no HTTP", not "any port".
int FreePort();
// "127.0.0.1:PORT" of the server's HTTP listener, from its log; "" if none.
std::string HttpAddress(const e2e::ServerProcess& server);
// GET http://address/path (Connection: close). Returns the body; sets
// *status (0 when the request failed).
std::string HttpGet(const std::string& address, const std::string& path, int* status);
// Sums of one counter family by the value of one label, e.g.
// gdnserve_request_errors_total by "code" -> {"INVALID_ARGUMENT": 3}.
std::map<std::string, double> CounterByLabel(const std::string& metrics_text, const std::string& family,
                                             const std::string& label);
// VmRSS of pid in KiB (-1 if unreadable).
int64_t RssKiB(pid_t pid);
// An environment variable as an int, or `fallback`.
int EnvInt(const char* name, int fallback);

}  // namespace gdnserve::soak
