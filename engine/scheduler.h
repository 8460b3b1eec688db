// The scheduler: a pure function from the engine's state to a step plan
// (vLLM v1's shape: no prefill or decode phase, just tokens per request under
// a budget). It never touches the model, so it is tested alone.
//
// Policy:
//  - every decoding sequence gets its one token, always (decode is never
//    starved by prompts);
//  - the rest of the step's token budget goes to prefill pieces: first to
//    admitted groups still prefilling (in admission order), then to waiting
//    groups admitted FCFS while they have the state slots they need;
//  - a prefill piece that is not the prompt's last is a multiple of
//    `chunk_align` tokens, so chunk boundaries fall at the same absolute
//    positions however a prompt is split (exact state snapshots).
#pragma once

#include <cstdint>
#include <vector>

namespace gdnserve {

struct RunningGroup {
  uint64_t id = 0;
  int64_t prefill_remaining = 0;  // prompt tokens not yet prefilled
  int num_decoding = 0;           // sequences decoding (0 while prefilling)
};

struct WaitingGroup {
  uint64_t id = 0;
  int slots_needed = 1;    // n: a slot per sample
  int64_t prompt_tokens = 0;
};

struct SchedulerInput {
  std::vector<RunningGroup> running;  // admission order
  std::vector<WaitingGroup> waiting;  // arrival order
  int free_slots = 0;
  int64_t token_budget = 512;
  int64_t max_prefill_chunk = 512;
  int64_t chunk_align = 64;
};

struct PrefillPiece {
  uint64_t id = 0;
  int64_t num_tokens = 0;
};

struct SchedulerPlan {
  std::vector<uint64_t> admit;        // waiting groups admitted this step, in order
  std::vector<uint64_t> decode;       // groups whose decoding sequences each run one token
  std::vector<PrefillPiece> prefill;  // next prompt piece of these groups
  int64_t num_tokens = 0;             // decode tokens + prefill tokens
};

SchedulerPlan Schedule(const SchedulerInput& in);

}  // namespace gdnserve
