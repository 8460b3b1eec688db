// gRPC server reflection (grpc.reflection.v1 and v1alpha), answered from the
// generated descriptor pool, so grpcurl, grpc_cli and grpcio-reflection can
// list the services and fetch their .proto descriptors.
//
// Why not gRPC's own plugin (libgrpc++_reflection): it links the shared
// libprotobuf, and Debian's libsentencepiece exports a private, older copy of
// the same protobuf symbols; the two cannot be loaded into one process (see
// server/CMakeLists.txt). This one uses the statically linked protobuf.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/impl/service_type.h"

namespace gdnserve::server {

class ReflectionServices {
 public:
  // `service_names`: what list_services reports (the reflection services
  // themselves are added).
  explicit ReflectionServices(std::vector<std::string> service_names);
  ~ReflectionServices();
  // Register each with the ServerBuilder; they must outlive the server.
  std::vector<grpc::Service*> services();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gdnserve::server
