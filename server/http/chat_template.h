// Turns OpenAI chat messages into one prompt text for a model that has no
// chat format of its own (gdnserve serves base models). Jinja templates are
// out of scope: a template here is, per role, a prefix and a suffix around
// the message content, plus the text that asks the model to answer.
//
// The default renders "<role>: <content>\n" per message and ends with
// "assistant:" (the tokenizer's normalizer would drop a trailing space anyway):
//
//   system: You are terse.
//   user: Hi
//   assistant:
//
// A model directory may carry chat_template.json (or --chat-template FILE):
//
//   {
//     "roles": {
//       "system":    {"prefix": "### System\n",    "suffix": "\n\n"},
//       "user":      {"prefix": "### User\n",      "suffix": "\n\n"},
//       "assistant": {"prefix": "### Assistant\n", "suffix": "\n\n"}
//     },
//     "generation_prompt": "### Assistant\n",
//     "strip_leading_space": true
//   }
//
// Every field is optional (missing roles keep the default); any other field
// is an error naming it. "developer" messages use the "system" entry unless
// the file gives one. strip_leading_space (default true) drops one leading
// space from each answer: a SentencePiece continuation of "assistant:"
// starts with the word's space, which a chat client would show.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gdnserve::server::http {

struct ChatMessage {
  std::string role;     // system, developer, user or assistant
  std::string content;  // text parts joined
};

struct ChatTemplate {
  struct Affixes {
    std::string prefix;
    std::string suffix;
  };
  std::map<std::string, Affixes> roles;
  std::string generation_prompt;
  bool strip_leading_space = true;

  static ChatTemplate Default();
  // Parses a chat_template.json text (see above); errors name the field.
  static absl::StatusOr<ChatTemplate> FromJson(const std::string& text);
  // Reads `path`; errors start with the path.
  static absl::StatusOr<ChatTemplate> FromFile(const std::string& path);
  // dir/chat_template.json if it exists, else Default().
  static absl::StatusOr<ChatTemplate> ForModelDir(const std::string& dir);

  bool HasRole(const std::string& role) const;
  // The prompt for `messages` (roles already checked with HasRole).
  std::string Render(const std::vector<ChatMessage>& messages) const;
};

}  // namespace gdnserve::server::http
