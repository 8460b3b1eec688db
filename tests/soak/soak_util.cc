#include "tests/soak/soak_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

namespace gdnserve::soak {

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string HttpAddress(const e2e::ServerProcess& server) {
  static const std::regex re("listening on (127\\.0\\.0\\.1:[0-9]+) \\(HTTP");
  std::smatch m;
  const std::string log = server.log();
  return std::regex_search(log, m, re) ? std::string(m[1]) : std::string();
}

std::string HttpGet(const std::string& address, const std::string& path, int* status) {
  *status = 0;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(address.c_str() + colon + 1)));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + address + "\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  if (resp.compare(0, 9, "HTTP/1.1 ") != 0) return "";
  *status = std::atoi(resp.c_str() + 9);
  const size_t body = resp.find("\r\n\r\n");
  if (body == std::string::npos) return "";
  std::string out = resp.substr(body + 4);
  // De-chunk if needed (cpp-httplib sends Content-Length for /metrics, but
  // be tolerant).
  if (resp.substr(0, body).find("Transfer-Encoding: chunked") != std::string::npos) {
    std::string plain;
    size_t pos = 0;
    while (pos < out.size()) {
      const size_t eol = out.find("\r\n", pos);
      if (eol == std::string::npos) break;
      const size_t len = std::strtoul(out.substr(pos, eol - pos).c_str(), nullptr, 16);
      if (len == 0) break;
      plain += out.substr(eol + 2, len);
      pos = eol + 2 + len + 2;
    }
    out = plain;
  }
  return out;
}

std::map<std::string, double> CounterByLabel(const std::string& metrics_text, const std::string& family,
                                             const std::string& label) {
  std::map<std::string, double> out;
  std::istringstream in(metrics_text);
  std::string line;
  const std::regex label_re(label + "=\"([^\"]*)\"");
  while (std::getline(in, line)) {
    if (line.compare(0, family.size() + 1, family + "{") != 0) continue;
    std::smatch m;
    if (!std::regex_search(line, m, label_re)) continue;
    const size_t space = line.rfind(' ');
    out[m[1]] += std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

int64_t RssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 6, "VmRSS:") == 0) return std::strtoll(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

}  // namespace gdnserve::soak
