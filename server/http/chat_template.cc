#include "server/http/chat_template.h"

#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"

namespace gdnserve::server::http {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError("chat template: " + field + ": " + why);
}

absl::Status ReadString(const Json& obj, const std::string& path, const char* key, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  if (!it->is_string()) return Bad(path + key, std::string("must be a string, got ") + it->type_name());
  *out = it->get<std::string>();
  return absl::OkStatus();
}

}  // namespace

ChatTemplate ChatTemplate::Default() {
  ChatTemplate t;
  for (const char* role : {"system", "developer", "user", "assistant"}) {
    t.roles[role] = {std::string(role) + ": ", "\n"};
  }
  t.generation_prompt = "assistant:";
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("chat template: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("chat template: must be a JSON object");
  ChatTemplate t = Default();
  bool developer_given = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "roles") {
      if (!it->is_object()) return Bad("roles", std::string("must be an object, got ") + it->type_name());
      for (auto r = it->begin(); r != it->end(); ++r) {
        const std::string path = "roles." + r.key() + ".";
        if (!t.HasRole(r.key())) return Bad("roles." + r.key(), "unknown role (system, developer, user, assistant)");
        if (!r->is_object()) return Bad("roles." + r.key(), std::string("must be an object, got ") + r->type_name());
        for (auto f = r->begin(); f != r->end(); ++f) {
          if (f.key() != "prefix" && f.key() != "suffix") return Bad(path + f.key(), "unknown field");
        }
        Affixes& a = t.roles[r.key()];
        if (absl::Status s = ReadString(*r, path, "prefix", &a.prefix); !s.ok()) return s;
        if (absl::Status s = ReadString(*r, path, "suffix", &a.suffix); !s.ok()) return s;
        if (r.key() == "developer") developer_given = true;
      }
    } else if (key == "generation_prompt") {
      if (absl::Status s = ReadString(j, "", "generation_prompt", &t.generation_prompt); !s.ok()) return s;
    } else if (key == "strip_leading_space") {
      if (!it->is_boolean()) return Bad(key, std::string("must be a boolean, got ") + it->type_name());
      t.strip_leading_space = it->get<bool>();
    } else {
      return Bad(key, "unknown field");
    }
  }
  if (!developer_given) t.roles["developer"] = t.roles["system"];
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<ChatTemplate> t = FromJson(ss.str());
  if (!t.ok()) return absl::Status(t.status().code(), path + ": " + std::string(t.status().message()));
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::ForModelDir(const std::string& dir) {
  const std::string path = dir + "/chat_template.json";
  if (!std::ifstream(path)) return Default();
  return FromFile(path);
}

bool ChatTemplate::HasRole(const std::string& role) const { return roles.count(role) > 0; }

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages) const {
  std::string out;
  for (const ChatMessage& m : messages) {
    const Affixes& a = roles.at(m.role);
    out += a.prefix;
    out += m.content;
    out += a.suffix;
  }
  out += generation_prompt;
  return out;
}

}  // namespace gdnserve::server::http
