#include "server/net.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gdnserve::server {

std::string HostPort(const std::string& host, int port) {
  const bool v6 = absl::StrContains(host, ':') && !absl::StartsWith(host, "[");
  return v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

absl::Status ProbeListen(const std::string& host, int port, const std::string& what) {
  if (port == 0) return absl::OkStatus();
  std::string h = host;
  if (absl::StartsWith(h, "[") && absl::EndsWith(h, "]")) h = h.substr(1, h.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (int rc = getaddrinfo(h.c_str(), port_str.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--host ", host, ": ", gai_strerror(rc)));
  }
  const std::string where = absl::StrCat("cannot listen on ", HostPort(host, port), what.empty() ? "" : " (",
                                         what, what.empty() ? "" : ")", ": ");
  absl::Status status = absl::OkStatus();
  for (addrinfo* ai = res; ai != nullptr && status.ok(); ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) status = absl::UnavailableError(where + std::strerror(errno));
    close(fd);
  }
  freeaddrinfo(res);
  return status;
}

}  // namespace gdnserve::server
