// Small socket helpers shared by the gRPC and HTTP front ends.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace gdnserve::server {

// "host:port", with an IPv6 host bracketed ("[::1]:8000").
std::string HostPort(const std::string& host, int port);

// Binds host:port once (SO_REUSEADDR, as gRPC and cpp-httplib do) and lets
// it go, so that "address in use" or "no such address" becomes one clear
// line: "cannot listen on HOST:PORT (what): reason". Port 0 is always OK.
// InvalidArgument for a host that does not resolve, Unavailable otherwise.
absl::Status ProbeListen(const std::string& host, int port, const std::string& what);

}  // namespace gdnserve::server
