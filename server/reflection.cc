#include "server/reflection.h"

#include <deque>
#include <set>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace gdnserve::server {
namespace {

namespace gp = google::protobuf;

// The two protocol versions have identical messages in different packages,
// so one implementation serves both.
template <typename ServiceT, typename Req, typename Resp>
class ReflectionService final : public ServiceT::CallbackService {
 public:
  explicit ReflectionService(const std::vector<std::string>* names) : names_(names) {}

  grpc::ServerBidiReactor<Req, Resp>* ServerReflectionInfo(grpc::CallbackServerContext* /*ctx*/) override {
    return new Stream(names_);
  }

 private:
  // One request, one response, strictly alternating: a single operation is
  // in flight at any time, so the reactor needs no lock.
  class Stream final : public grpc::ServerBidiReactor<Req, Resp> {
   public:
    explicit Stream(const std::vector<std::string>* names) : names_(names) { this->StartRead(&req_); }

    void OnReadDone(bool ok) override {
      if (!ok) {  // the client half-closed or went away
        this->Finish(grpc::Status::OK);
        return;
      }
      Answer();
      this->StartWrite(&resp_);
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        this->Finish(grpc::Status(grpc::StatusCode::UNKNOWN, "write failed"));
        return;
      }
      this->StartRead(&req_);
    }
    void OnDone() override { delete this; }

   private:
    void Answer() {
      resp_.Clear();
      resp_.set_valid_host(req_.host());
      *resp_.mutable_original_request() = req_;
      const gp::DescriptorPool* pool = gp::DescriptorPool::generated_pool();
      switch (req_.message_request_case()) {
        case Req::kListServices:
          for (const std::string& name : *names_) resp_.mutable_list_services_response()->add_service()->set_name(name);
          return;
        case Req::kFileByFilename:
          return SendFile(pool->FindFileByName(req_.file_by_filename()), req_.file_by_filename());
        case Req::kFileContainingSymbol:
          return SendFile(pool->FindFileContainingSymbol(req_.file_containing_symbol()), req_.file_containing_symbol());
        case Req::kFileContainingExtension: {
          const auto& ext = req_.file_containing_extension();
          const gp::Descriptor* type = pool->FindMessageTypeByName(ext.containing_type());
          const gp::FieldDescriptor* field =
              type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
          return SendFile(field == nullptr ? nullptr : field->file(), ext.containing_type());
        }
        case Req::kAllExtensionNumbersOfType: {
          const gp::Descriptor* type = pool->FindMessageTypeByName(req_.all_extension_numbers_of_type());
          if (type == nullptr) return Error(grpc::StatusCode::NOT_FOUND, "type not found");
          std::vector<const gp::FieldDescriptor*> fields;
          pool->FindAllExtensions(type, &fields);
          auto* out = resp_.mutable_all_extension_numbers_response();
          out->set_base_type_name(type->full_name());
          for (const gp::FieldDescriptor* f : fields) out->add_extension_number(f->number());
          return;
        }
        default: return Error(grpc::StatusCode::UNIMPLEMENTED, "unknown message_request");
      }
    }

    // The file, then (breadth first) each of its imports not yet sent on this
    // stream, as grpc-go does: clients ask again for what they lack.
    void SendFile(const gp::FileDescriptor* file, const std::string& what) {
      if (file == nullptr) return Error(grpc::StatusCode::NOT_FOUND, "not found: " + what);
      auto* out = resp_.mutable_file_descriptor_response();
      std::deque<const gp::FileDescriptor*> queue = {file};
      bool first = true;
      while (!queue.empty()) {
        const gp::FileDescriptor* f = queue.front();
        queue.pop_front();
        if (first || sent_.insert(f->name()).second) {
          sent_.insert(f->name());
          gp::FileDescriptorProto proto;
          f->CopyTo(&proto);
          proto.SerializeToString(out->add_file_descriptor_proto());
        }
        first = false;
        for (int i = 0; i < f->dependency_count(); ++i) queue.push_back(f->dependency(i));
      }
    }

    void Error(grpc::StatusCode code, const std::string& message) {
      resp_.mutable_error_response()->set_error_code(static_cast<int>(code));
      resp_.mutable_error_response()->set_error_message(message);
    }

    const std::vector<std::string>* names_;
    std::set<std::string> sent_;
    Req req_;
    Resp resp_;
  };

  const std::vector<std::string>* names_;
};

namespace v1 = grpc::reflection::v1;
namespace v1a = grpc::reflection::v1alpha;
using V1Service = ReflectionService<v1::ServerReflection, v1::ServerReflectionRequest, v1::ServerReflectionResponse>;
using V1AlphaService =
    ReflectionService<v1a::ServerReflection, v1a::ServerReflectionRequest, v1a::ServerReflectionResponse>;

}  // namespace

struct ReflectionServices::Impl {
  std::vector<std::string> names;
  V1Service v1{&names};
  V1AlphaService v1alpha{&names};
};

ReflectionServices::ReflectionServices(std::vector<std::string> service_names) : impl_(std::make_unique<Impl>()) {
  impl_->names = std::move(service_names);
  impl_->names.push_back(v1::ServerReflection::service_full_name());
  impl_->names.push_back(v1a::ServerReflection::service_full_name());
}

ReflectionServices::~ReflectionServices() = default;

std::vector<grpc::Service*> ReflectionServices::services() { return {&impl_->v1, &impl_->v1alpha}; }

}  // namespace gdnserve::server
