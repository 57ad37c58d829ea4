// slotcon train: SlotCon pre-training on one device, or data-parallel on several processes
// started by mpirun / srun (docs/method.md §2–§7, docs/training.md "Several processes").
//
//   slotcon train [--config FILE] [--key value ...] [--resume FILE] [--no-auto-resume]
//                 [--init FILE] [--batch-file FILE] [--save-batch FILE] [--steps N]
//
// Every step is model/train_step.h's TrainStep at the scheduled lr (warm-up then cosine) and
// teacher momentum. Progress every print_freq steps; metrics as JSON lines in
// output_dir/metrics.jsonl; checkpoints every save_freq epochs and at the end (atomic); auto-resume
// from the newest good checkpoint in output_dir.
//
// cmd_train = parse_train_args, then Run's setup (device, options, model, TrainStep), restore
// (init / resume), setup_data (batches, schedules), setup_eval (grouping score, slot pictures),
// loop (steps and progress lines) and report.
//
// Several processes (engine/comm.h): each rank runs the same Run over its share of the data
// (the loader's rank / world_size, or its rows of a replayed batch file) and the same TrainStep,
// which synchronises BatchNorm, the loss's keys and center, and the gradients. Rank 0 alone prints
// (the others' stdout goes to /dev/null; their stderr stays), writes metrics, checkpoints,
// pictures and scores, and chooses the checkpoint every rank resumes from. A configuration that
// differs between ranks is refused at the start; an error on any rank ends the whole job
// (Communicator::abort), and a rank that stops answering ends the others after the collectives'
// timeout (SLOTCON_COMM_TIMEOUT).
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "apps/commands.h"
#include "apps/curves.h"
#include "apps/slot_picture.h"
#include "data/loader.h"
#include "data/scenes.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "engine/upload.h"
#include "kernels/parallel.h"
#include "model/batch_file.h"
#include "model/checkpoint.h"
#include "model/grouping_score.h"
#include "model/schedule.h"
#include "model/slotcon.h"
#include "model/train_config.h"
#include "model/train_step.h"

namespace sc {
namespace app {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void train_usage() {
  std::printf(
      "usage: slotcon train [--config FILE] [--KEY VALUE ...] [options]\n\n"
      "SlotCon pre-training on one device (the GPU if present, else the CPU).\n\n"
      "options:\n"
      "  --config FILE       JSON config (keys below); command-line keys override it\n"
      "  --resume FILE       resume from this checkpoint (refused when it was written with\n"
      "                      another arch, dim_hidden, dim_out, num_prototypes, optimizer,\n"
      "                      batch_size, dataset, synthetic_images or synthetic_objects)\n"
      "  --no-auto-resume    do not resume from the newest good checkpoint in output_dir\n"
      "  --init FILE         initialise the model from a state file with the reference names\n"
      "  --batch-file FILE   replay this recorded batch (crops.0/1, coords.0/1, flags.0/1) every\n"
      "                      step instead of the loader\n"
      "  --save-batch FILE   record the first batch trained on as such a batch file (for\n"
      "                      replays, and comparisons with bench/train_step_torch.py)\n"
      "  --steps N           stop after N steps and write the full state to\n"
      "                      output_dir/final.safetensors\n"
      "  --steps 0           only print the grouping score of the initial / resumed state\n\n"
      "several processes: mpirun -np N slotcon train ... (or srun): data-parallel over N ranks,\n"
      "batch_size images per rank, lr from the global batch; see docs/training.md\n\n"
      "environment: SLOTCON_NUM_THREADS = threads of the CPU ops (default: the CPUs it may use);\n"
      "OPENBLAS_NUM_THREADS = threads of the CPU matrix products (OpenBLAS's default: every "
      "core);\nOPENBLAS_THREAD_TIMEOUT = how long idle BLAS threads spin (slotcon sets 4 when "
      "unset)\nSLOTCON_COMM_TIMEOUT = seconds a rank waits for the others in a collective "
      "before it\ngives up (default 600); SLOTCON_DIST = single | mpi (default: mpi when started "
      "by mpirun or srun)\n\n"
      "config keys (--key value or --key=value; defaults are the authors' settings):\n%s",
      config_help().c_str());
}

std::string fmt_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char b[32];
  const long t = long(s + 0.5);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  return b;
}

// Create output_dir and prove that a file can be written there (the way checkpoints are
// written), so that a read-only or full folder stops the run now, not at its first checkpoint.
void check_output_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  SC_CHECK(!ec, "cannot create output_dir '", dir, "': ", ec.message());
  const std::string probe = (fs::path(dir) / ".slotcon_write_test").string();
  try {
    write_file_atomic(probe, "slotcon\n");
  } catch (const Error& e) {
    throw Error(str_cat("output_dir '", dir, "' is not writable: ", e.what()));
  }
  fs::remove(probe, ec);
}

struct Scorer {
  data::SceneBatch scenes;
  int64_t count = 0;
  int size = 0;
};

GroupingScore grouping_eval(SlotConModel& model, const Scorer& sc, Device dev) {
  Tensor pred = model.assign_prototypes(sc.scenes.images.to(dev));  // (B, h, w)
  const int64_t B = pred.size(0), h = pred.size(1), w = pred.size(2);
  std::vector<double> pv = pred.to_vector();
  std::vector<int64_t> protos(pv.begin(), pv.end());
  std::vector<double> cm = sc.scenes.class_maps.to_vector();
  std::vector<uint8_t> cmu(cm.begin(), cm.end());
  std::vector<int> cls;
  cls.reserve(size_t(B * h * w));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int> d = downsample_mode(cmu.data() + b * sc.size * sc.size, sc.size, sc.size,
                                         int(w), int(h), data::kSceneClasses);
    cls.insert(cls.end(), d.begin(), d.end());
  }
  return grouping_score(protos, cls, int(model.config().num_prototypes), data::kSceneClasses);
}

void print_score(const char* when, int64_t step, const GroupingScore& g, int64_t K) {
  std::printf("grouping score %s (step %lld): mIoU %.4f, pixel accuracy %.3f, %d of %lld "
              "prototypes used\n",
              when, (long long)step, g.miou, g.pixel_accuracy, g.prototypes_used, (long long)K);
}

// One line of output_dir/grouping.jsonl: the score after `step` steps.
void log_score(const std::string& output_dir, int64_t step, int64_t epoch, const GroupingScore& g) {
  std::ofstream f(fs::path(output_dir) / "grouping.jsonl", std::ios::app);
  f << nlohmann::json{{"step", step},
                      {"epoch", epoch},
                      {"miou", g.miou},
                      {"pixel_accuracy", g.pixel_accuracy},
                      {"prototypes_used", g.prototypes_used}}
           .dump()
    << "\n";
}

// The command line: config keys, and the options that are not keys.
struct TrainArgs {
  TrainConfig cfg;
  std::string resume, init, batch_file, save_batch;
  bool auto_resume = true;
  int64_t steps = -1;  // --steps (-1: not given)
};

// Parses the command line into `a`; returns an exit code when the command is done (--help, an
// unknown option), nothing when training should go on.
std::optional<int> parse_train_args(const Args& args_in, TrainArgs& a) {
  Args args = args_in;
  // --config first, so that command-line keys override the file whatever their order.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      train_usage();
      return 0;
    }
    if (args[i] == "--config") {
      SC_CHECK(i + 1 < args.size(), "--config needs a file");
      a.cfg = load_config_file(args[i + 1]);
      args.erase(args.begin() + long(i), args.begin() + long(i) + 2);
      break;
    }
  }
  Args rest = apply_overrides(a.cfg, args);
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& o = rest[i];
    auto value = [&]() -> std::string { return option_value(rest, &i); };
    if (o == "--resume") a.resume = value();
    else if (o == "--init") a.init = value();
    else if (o == "--batch-file") a.batch_file = value();
    else if (o == "--save-batch") a.save_batch = value();
    else if (o == "--steps") a.steps = parse_count(o, value());
    else if (o == "--no-auto-resume") a.auto_resume = false;
    else {
      std::fprintf(stderr, "slotcon train: unknown option '%s' (see --help)\n", o.c_str());
      return 2;
    }
  }
  if (a.steps > 0) a.cfg.max_steps = a.steps;
  if (!a.batch_file.empty() && a.cfg.dataset == "folder" && a.cfg.data_dir.empty())
    a.cfg.dataset = "synthetic";  // the loader is not used
  a.cfg.validate();
  return std::nullopt;
}

// The optimizer's momentum buffers from a checkpoint, by parameter name; returns how many
// parameters have none there.
size_t load_optimizer_state(TrainStep& train, const Checkpoint& c, const std::string& file,
                            Device dev) {
  const NamedTensors& params = train.parameters();
  std::vector<Tensor>& st = train.optimizer_state();
  size_t missing = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = c.optimizer.find(params[i].first);
    if (it == c.optimizer.end()) {
      ++missing;
      continue;
    }
    SC_CHECK(it->second.shape() == params[i].second.shape(), file, ": optimizer state of ",
             params[i].first, " has shape ", shape_str(it->second.shape()), ", the parameter ",
             shape_str(params[i].second.shape()));
    st[i] = cast(it->second, params[i].second.dtype()).to(dev);
  }
  return missing;
}

// Progress lines on stdout and in output_dir/metrics.jsonl: means over the steps since the last
// line.
struct Progress {
  Clock::time_point start = Clock::now(), last = start;
  int64_t first_step = 0, images = 0, n = 0, overflows = 0;
  double loss = 0, group = 0, contrast = 0;

  void add(const StepLoss& l, int64_t batch) {
    images += batch;
    loss += l.value;
    group += l.group;
    contrast += l.contrast;
    ++n;
  }
  void print(int64_t step, int64_t total_steps, int64_t steps_per_epoch, double lr, double m,
             const GradScaler* scaler, std::ofstream& metrics) {
    auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    const double el = std::chrono::duration<double>(now - start).count();
    const double ips = dt > 0 ? double(images) / dt : 0;
    const double eta = el / double(step - first_step) * double(total_steps - step);
    // fp16: the loss scale, and how many steps since the last line overflowed (not applied)
    const std::string fp16 =
        scaler ? str_cat("  scale ", int64_t(scaler->current_scale()),
                         overflows ? str_cat(" (", overflows, " overflowed)") : "")
               : std::string();
    std::printf("epoch %lld step %lld/%lld  loss %.4f (group %.4f, contrast %.4f)  lr %.4g  "
                "m %.5f  %.1f img/s  eta %s%s\n",
                (long long)(step - 1) / steps_per_epoch, (long long)step, (long long)total_steps,
                loss / n, group / n, contrast / n, lr, m, ips, fmt_time(eta).c_str(),
                fp16.c_str());
    std::fflush(stdout);
    nlohmann::json j = {{"epoch", (step - 1) / steps_per_epoch}, {"step", step},
                        {"loss", loss / n}, {"group", group / n},
                        {"contrast", contrast / n}, {"lr", lr}, {"momentum", m},
                        {"images_per_s", ips}};
    if (scaler) j["loss_scale"] = scaler->current_scale();
    metrics << j.dump() << "\n";
    metrics.flush();
    *this = Progress{start, now, first_step};
  }
};

// One training run: what setup builds and the loop advances.
class Run {
 public:
  Run(TrainArgs a, Communicator& comm) : a_(std::move(a)), cfg_(a_.cfg), comm_(comm) {}
  void check_same_config();
  void setup();
  void restore();
  void setup_data();
  void setup_eval();
  bool score_only() const { return a_.steps == 0; }
  void report_score_only() const;
  int loop();
  void report();

 private:
  TwoViewBatch next_batch();
  bool skip_nonfinite(const StepLoss& l, int64_t step);
  void end_of_epoch();
  void save(const std::string& path);
  void score_now(const std::string& when);
  void draw_slots(const std::string& name);
  void draw_curves();

  // rank 0: prints, writes files, scores and draws
  bool lead() const { return comm_.rank() == 0; }
  // resumed from a checkpoint written by another number of processes
  bool ckpt_world_changed() const { return resumed_ && resumed_world_ != comm_.world(); }

  TrainArgs a_;
  const TrainConfig& cfg_;
  Communicator& comm_;
  std::string resume_;             // the checkpoint to resume from ("" when none)
  std::optional<Checkpoint> ckpt_;  // read in setup, applied (and released) in restore
  Device dev_;
  TrainOptions opts_;
  std::unique_ptr<SlotConModel> model_;
  std::unique_ptr<TrainStep> train_;
  int64_t step_ = 0;
  bool resumed_ = false;
  int64_t resumed_world_ = 1, resumed_epoch_ = 0;  // of the checkpoint resumed from
  // batches: the loader, or one recorded batch replayed
  std::unique_ptr<data::DataLoader> loader_;
  std::unique_ptr<Uploader> uploader_;  // the crops' copies to a GPU, on its copy stream
  std::optional<TwoViewBatch> fixed_;
  // schedules: they always span the whole planned run (epochs x steps per epoch); max_steps only
  // stops early, so that a run stopped and resumed follows the same schedule
  int64_t steps_per_epoch_ = 1, epoch_steps_total_ = 0, total_steps_ = 0, warmup_steps_ = 0;
  int64_t batch_images_ = 0;
  double lr_peak_ = 0;
  std::optional<Scorer> scorer_;
  std::optional<PictureImages> pictures_;
  // for the report
  int64_t first_step_ = 0, skipped_ = 0, overflows_ = 0;
  int64_t comm_bytes_ = 0, comm_calls_ = 0;  // in the loop's collectives (several processes)
  std::string graph_note_;                   // the last cuda_graph note printed
  double seconds_ = 0;
};

// FNV-1a: a fingerprint of the configuration text, compared across ranks.
uint64_t fingerprint(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Every rank must train with the same settings (config keys and the options that are not keys):
// a rank started with other arguments would compute other shapes or another schedule and hang or
// corrupt the others. Refused at the start, naming the ranks that differ from rank 0.
void Run::check_same_config() {
  if (comm_.world() == 1) return;
  const std::string text = str_cat(cfg_.to_json_text(), "\nresume=", a_.resume, "\ninit=", a_.init,
                                    "\nbatch_file=", a_.batch_file, "\nauto_resume=",
                                    a_.auto_resume, "\nsteps=", a_.steps);
  const std::vector<int64_t> all = comm_.all_gather_i64(int64_t(fingerprint(text)));
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += str_cat(differ.empty() ? "" : ", ", r);
  SC_CHECK(differ.empty(), "the configuration differs between ranks: rank(s) ", differ,
           " were started with other settings than rank 0 (every rank must get the same config "
           "file and options)");
}

// Device, typed options, the banner, the model and its TrainStep.
void Run::setup() {
  dev_ = choose_device(cfg_.device, "device");
  // data-parallel on GPUs: one device per process, cuda:local_rank (engine/comm.h), whose
  // collectives go through NCCL
  if (comm_.world() > 1 && dev_.is_cuda()) {
    SC_CHECK(comm_.has_cuda_collectives(), "data-parallel training on ", dev_.str(),
             " needs the NCCL backend, which this build does not have (CMake found no nccl.h "
             "and libnccl, or no MPI); use --device cpu with several processes, or one process "
             "per GPU machine");
    dev_ = comm_cuda_device(comm_);
  }
  opts_ = resolve_train_options(cfg_, dev_);
  if (lead() && cfg_.dim_out > cfg_.num_prototypes)
    std::printf("note: dim_out (%lld) > num_prototypes (%lld): the prototypes cannot span the slot "
                "space, and pixel features orthogonal to all of them get a uniform assignment, "
                "a collapse short runs fall into (the authors always have K >= D)\n",
                (long long)cfg_.dim_out, (long long)cfg_.num_prototypes);
  if (lead()) check_output_dir(cfg_.output_dir);
  const int nt = cpu_threads();
  const std::string dev_detail = dev_.is_cuda()
                                     ? " (" + cuda_device_name(dev_.index) + ")"
                                     : str_cat(" (", nt, nt == 1 ? " thread)" : " threads)");
  std::printf("slotcon train: %s on %s%s, precision %s, output %s\n", cfg_.arch.c_str(),
              dev_.str().c_str(), dev_detail.c_str(), opts_.precision_name(),
              cfg_.output_dir.c_str());
  if (comm_.world() > 1)
    std::printf(
        "data-parallel: %d processes (%s), batch %lld per process; rank 0 prints and "
        "writes\n",
        comm_.world(), str_cat(comm_.backend(), dev_.is_cuda() ? " + NCCL" : "").c_str(),
        (long long)cfg_.batch_size);
  // the checkpoint to resume from: read and compared with this run's config before the model is
  // built, so that one that does not fit is refused at once
  // (rank 0 chooses; every rank reads that file: output_dir must be shared by the ranks)
  resume_ = a_.resume;
  if (resume_.empty() && a_.auto_resume && lead()) {
    std::vector<std::string> warn;
    resume_ = find_latest_checkpoint(cfg_.output_dir, &warn);
    for (auto& w : warn) std::printf("warning: %s\n", w.c_str());
  }
  resume_ = comm_.broadcast_string(resume_);
  if (!resume_.empty()) {
    try {
      ckpt_ = load_checkpoint(resume_);
    } catch (const Error& e) {
      if (comm_.world() == 1) throw;
      throw Error(str_cat("rank ", comm_.rank(), " cannot read the checkpoint rank 0 chose (is "
                          "output_dir on a file system every rank sees?): ", e.what()));
    }
    for (const std::string& d : check_resume_config(ckpt_->info.config_json, cfg_, resume_))
      std::printf("note: resuming with a changed setting: %s\n", d.c_str());
  }
  model_ = std::make_unique<SlotConModel>(cfg_, dev_, cfg_.seed);
  model_->train();
  train_ = std::make_unique<TrainStep>(*model_, opts_, cfg_, &comm_);
}

// --init, then --resume or the newest good checkpoint in output_dir: model, optimizer state,
// step, fp16 loss scale.
void Run::restore() {
  if (!a_.init.empty()) {
    SafetensorsFile f = read_safetensors(a_.init);
    try {
      model_->load_state_dict(f.tensors, /*strict=*/true, {"num_batches_tracked"});
    } catch (const Error& e) {
      throw Error(str_cat(a_.init, ": ", e.what()));
    }
    std::printf("initialised from %s (%zu tensors)\n", a_.init.c_str(), f.tensors.size());
  }
  if (!ckpt_) return;
  const std::string& resume = resume_;
  const Checkpoint& c = *ckpt_;
  try {
    model_->load_state_dict(c.model, true, {"num_batches_tracked"});
  } catch (const Error& e) {
    throw Error(str_cat(resume, ": ", e.what()));
  }
  const size_t missing = load_optimizer_state(*train_, c, resume, dev_);
  if (missing && c.info.step > 0)
    std::printf("warning: %s has no optimizer state for %zu of %zu parameters; their momentum "
                "starts at zero\n",
                resume.c_str(), missing, train_->parameters().size());
  step_ = c.info.step;
  resumed_ = true;
  resumed_world_ = c.info.world_size;
  resumed_epoch_ = c.info.epoch;
  GradScaler* scaler = train_->scaler();
  if (scaler && c.info.loss_scale > 0)
    scaler->load_state(c.info.loss_scale, c.info.loss_scale_growth);
  std::printf("resumed from %s at step %lld (epoch %lld)\n", resume.c_str(),
              (long long)c.info.step, (long long)c.info.epoch);
  ckpt_.reset();  // its tensors are copied into the model and optimizer
}

// The batches (the loader's stream starts at the resumed position) and the schedules.
void Run::setup_data() {
  if (!a_.batch_file.empty()) {
    fixed_ = read_batch_file(a_.batch_file);
    // several ranks: the file is the global batch; rank r trains on its r-th 1/world of the rows
    const int64_t rows = fixed_->crops[0].size(0), W = comm_.world();
    SC_CHECK(rows % W == 0, a_.batch_file, ": ", rows, " images cannot be shared evenly by ", W,
             " processes");
    const int64_t per = rows / W, r0 = comm_.rank() * per;
    for (int v = 0; v < 2 && W > 1; ++v) {
      fixed_->crops[v] = slice(fixed_->crops[v], 0, r0, r0 + per).contiguous();
      fixed_->coords[v] = slice(fixed_->coords[v], 0, r0, r0 + per).contiguous();
      fixed_->flags[v] = slice(fixed_->flags[v], 0, r0, r0 + per).contiguous();
    }
    for (int v = 0; v < 2; ++v) {
      fixed_->crops[v] = cast(fixed_->crops[v], opts_.compute_dtype()).to(dev_);
      fixed_->coords[v] = fixed_->coords[v].to(dev_);
      fixed_->flags[v] = fixed_->flags[v].to(dev_);
    }
    std::printf("replaying the batch in %s every step (B = %lld%s)\n", a_.batch_file.c_str(),
                (long long)rows, W > 1 ? str_cat(", ", per, " per process").c_str() : "");
  } else {
    data::LoaderConfig lc;
    lc.synthetic = cfg_.dataset == "synthetic";
    lc.data_dir = cfg_.data_dir;
    lc.synthetic_count = cfg_.synthetic_images;
    lc.synthetic_seed = cfg_.seed;
    lc.synthetic_objects = data::parse_scene_objects(cfg_.synthetic_objects);
    lc.image_size = int(cfg_.image_size);
    lc.min_scale = cfg_.min_scale;
    // color_aug scales the colour changes that can move a pixel across the synthetic scenes'
    // colour classes (hue, saturation, grayscale); 1 keeps the authors' values exactly
    lc.augment.hue *= cfg_.color_aug;
    lc.augment.saturation *= cfg_.color_aug;
    lc.augment.grayscale_p *= cfg_.color_aug;
    lc.batch_size = int(cfg_.batch_size);
    lc.num_workers = int(cfg_.num_workers);
    lc.seed = cfg_.seed;
    lc.pin_memory = dev_.is_cuda();
    lc.u8_crops = true;  // normalised where they are used: a GPU gets 4x fewer bytes
    lc.rank = comm_.rank();  // DistributedSampler: one permutation per epoch, rank r its 1/W
    lc.world_size = comm_.world();
    std::shared_ptr<const data::Dataset> dataset = data::make_dataset(lc);
    const int64_t W = comm_.world();
    steps_per_epoch_ = dataset->size() / W / lc.batch_size;  // per rank, drop_last
    SC_CHECK(steps_per_epoch_ > 0, "the dataset has fewer images (", dataset->size(),
             ") than one batch (", cfg_.batch_size, W > 1 ? str_cat(" on each of ", W, " processes")
                                                          : std::string(), ")");
    if (ckpt_world_changed()) {
      // the checkpoint's steps were global batches of another size: continue from the same
      // point of the same epoch, in this run's steps
      const int64_t old_spe =
          std::max<int64_t>(dataset->size() / resumed_world_ / lc.batch_size, 1);
      const int64_t within = std::max<int64_t>(step_ - resumed_epoch_ * old_spe, 0);
      const int64_t now = resumed_epoch_ * steps_per_epoch_ + within * steps_per_epoch_ / old_spe;
      std::printf("note: the checkpoint was written by %lld processes, this run has %lld: the "
                  "global batch changes from %lld to %lld images and the learning rate with it; "
                  "step %lld of %lld per epoch becomes step %lld of %lld\n",
                  (long long)resumed_world_, (long long)W,
                  (long long)(resumed_world_ * lc.batch_size), (long long)(W * lc.batch_size),
                  (long long)step_, (long long)old_spe, (long long)now,
                  (long long)steps_per_epoch_);
      step_ = now;
    }
    lc.start_epoch = step_ / steps_per_epoch_;
    loader_ = std::make_unique<data::DataLoader>(dataset, lc);
    uploader_ = std::make_unique<Uploader>(dev_);
    SC_CHECK(loader_->size() == steps_per_epoch_, "loader batches per epoch disagree");
    for (int64_t i = 0; i < step_ % steps_per_epoch_; ++i) loader_->next_batch();
  }
  epoch_steps_total_ = cfg_.epochs * steps_per_epoch_;
  total_steps_ =
      cfg_.max_steps > 0 ? std::min(cfg_.max_steps, epoch_steps_total_) : epoch_steps_total_;
  warmup_steps_ = int64_t(std::llround(cfg_.warmup_epoch * double(steps_per_epoch_)));
  // lr = base_lr x global batch / 256 (the images of one step over all ranks)
  batch_images_ = (fixed_ ? fixed_->crops[0].size(0) : cfg_.batch_size) * comm_.world();
  lr_peak_ = cfg_.base_lr * double(batch_images_) / 256.0;
}

// The grouping score on held-out synthetic scenes and the slot pictures, each at the start.
void Run::setup_eval() {
  if (!lead()) return;  // no collective below: the scorer and pictures run in eval mode
  if (cfg_.dataset == "synthetic" && cfg_.score_images > 0) {
    Scorer s;
    s.size = int(cfg_.score_size > 0 ? cfg_.score_size : cfg_.image_size);
    s.count = cfg_.score_images;
    // scenes after the training set: never trained on
    s.scenes =
        data::render_scene_batch(cfg_.seed, cfg_.synthetic_images, cfg_.score_images, s.size,
                                 data::parse_scene_objects(cfg_.synthetic_objects));
    scorer_ = std::move(s);
    std::printf("grouping score: the teacher's arg-max prototype per pixel vs the scene classes "
                "on %lld held-out scenes at %d px (one-to-one matching, mean IoU over %d classes)\n",
                (long long)scorer_->count, scorer_->size, data::kSceneClasses);
  }
  if (scorer_) score_now("at the start");
  if (cfg_.slot_images > 0) {
    const int size = int(cfg_.score_size > 0 ? cfg_.score_size : cfg_.image_size);
    try {
      if (cfg_.dataset == "synthetic")
        pictures_ = picture_scenes(cfg_.seed, cfg_.synthetic_images, cfg_.slot_images, size,
                                   data::parse_scene_objects(cfg_.synthetic_objects));
      else
        pictures_ = picture_folder_images(data::split_paths(cfg_.data_dir), cfg_.slot_images,
                                          size, nullptr);
    } catch (const std::exception& e) {
      std::printf("warning: no slot pictures: %s\n", e.what());
    }
  }
  if (step_ == 0) draw_slots("slots_epoch_0000.png");
}

void Run::report_score_only() const {
  if (!scorer_)
    std::printf("--steps 0: nothing to do (the grouping score needs dataset 'synthetic' and "
                "score_images > 0)\n");
}

// Scores the teacher now: a line on stdout and one in output_dir/grouping.jsonl.
void Run::score_now(const std::string& when) {
  const GroupingScore g = grouping_eval(*model_, *scorer_, dev_);
  print_score(when.c_str(), step_, g, cfg_.num_prototypes);
  log_score(cfg_.output_dir, step_, step_ / steps_per_epoch_, g);
}

// Draws the slot pictures into output_dir/<name>; a failure (e.g. a full disk) is reported, not
// fatal.
void Run::draw_slots(const std::string& name) {
  if (!pictures_) return;
  const std::string path = (fs::path(cfg_.output_dir) / name).string();
  try {
    const int used = write_slot_picture(*model_, *pictures_, dev_, kSlotPictureCols, path);
    std::printf("slots drawn in %s (%d prototypes in use)\n", path.c_str(), used);
  } catch (const std::exception& e) {
    std::printf("warning: could not draw the slots in %s: %s\n", path.c_str(), e.what());
  }
}

void Run::save(const std::string& path) {
  if (!lead()) return;  // the replicas are equal: rank 0's state is everyone's
  const NamedTensors& params = train_->parameters();
  const std::vector<Tensor>& state = train_->optimizer_state();
  NamedTensors opt_state;
  for (size_t i = 0; i < params.size(); ++i)
    if (state[i].defined()) opt_state.emplace_back(params[i].first, state[i]);
  CheckpointInfo info{step_ / steps_per_epoch_, step_, cfg_.to_json_text()};
  info.world_size = comm_.world();
  if (const GradScaler* scaler = train_->scaler()) {
    info.loss_scale = scaler->current_scale();
    info.loss_scale_growth = scaler->growth_tracker();
  }
  save_checkpoint(path, model_->state_dict(), opt_state, info);
  std::printf("saved %s\n", path.c_str());
  std::vector<std::string> warn;
  for (const std::string& old : prune_checkpoints(cfg_.output_dir, cfg_.keep_checkpoints, &warn))
    std::printf("deleted %s (keep_checkpoints %lld)\n", old.c_str(),
                (long long)cfg_.keep_checkpoints);
  for (const std::string& w : warn) std::printf("warning: %s\n", w.c_str());
}

TwoViewBatch Run::next_batch() {
  if (fixed_) return *fixed_;
  data::Batch b = loader_->next_batch();
  TwoViewBatch batch;
  const ImageNorm norm{{data::kImageNetMean[0], data::kImageNetMean[1], data::kImageNetMean[2]},
                       {data::kImageNetStd[0], data::kImageNetStd[1], data::kImageNetStd[2]}};
  for (int v = 0; v < 2; ++v) {
    // uint8 crops: on a GPU copied on the copy stream (overlapping the previous step), then
    // normalised there into the compute dtype and the backbone's layout
    batch.crops[v] = normalize_images(uploader_->upload(b.crops[v], v), norm, opts_.compute_dtype(),
                                      opts_.channels_last ? MemoryFormat::ChannelsLast
                                                          : MemoryFormat::Contiguous);
    uploader_->consumed(v);
    batch.coords[v] = b.coords[v].to(dev_);
    batch.flags[v] = b.flags[v].to(dev_);
  }
  return batch;
}

// A non-finite loss at `step` (read after it ran; the device changed no parameter in it): with
// nonfinite 'skip' a warning and the step counted as done (returns true), with 'stop' the message
// on stderr (returns false).
bool Run::skip_nonfinite(const StepLoss& l, int64_t step) {
  const char* part = !std::isfinite(l.group)      ? "group loss"
                     : !std::isfinite(l.contrast) ? "contrast loss"
                                                  : "total loss";
  if (opts_.nonfinite == NonFinitePolicy::Stop) {
    if (lead())  // the loss is the mean over ranks: every rank stops here together
      std::fprintf(stderr,
                 "slotcon train: the %s is not finite at step %lld (epoch %lld); stopping. "
                 "No checkpoint was written for this step.\n",
                 part, (long long)step, (long long)(step / steps_per_epoch_));
    return false;
  }
  std::printf("warning: the %s is not finite at step %lld; the step changed nothing\n", part,
              (long long)step);
  ++skipped_;
  return true;
}

// Every save_freq epochs and at the last: the checkpoint, the slot pictures, the grouping score.
void Run::end_of_epoch() {
  const int64_t epoch = step_ / steps_per_epoch_;
  if (epoch % cfg_.save_freq != 0 && step_ != epoch_steps_total_) return;
  save(checkpoint_path(cfg_.output_dir, epoch));
  char name[48];
  std::snprintf(name, sizeof name, "slots_epoch_%04lld.png", (long long)epoch);
  draw_slots(name);
  if (scorer_ && step_ < total_steps_) score_now(str_cat("after epoch ", epoch));
  draw_curves();
}

// output_dir/curves.png from metrics.jsonl and grouping.jsonl (rank 0); a failure (e.g. a full
// disk) is reported, not fatal.
void Run::draw_curves() {
  if (!lead()) return;
  try {
    const std::string path = write_training_curves(cfg_.output_dir);
    if (!path.empty()) std::printf("curves drawn in %s\n", path.c_str());
  } catch (const std::exception& e) {
    std::printf("warning: could not draw the curves: %s\n", e.what());
  }
}

// The steps up to total_steps, with progress lines, checkpoints and end-of-epoch pictures and
// scores; returns 1 when a non-finite loss stops the run, else 0.
int Run::loop() {
  std::ofstream metrics;
  if (lead()) metrics.open(fs::path(cfg_.output_dir) / "metrics.jsonl", std::ios::app);
  std::printf("%lld steps (%lld per epoch), lr %.4g after %lld warm-up steps, batch %lld\n",
              (long long)total_steps_, (long long)steps_per_epoch_, lr_peak_,
              (long long)warmup_steps_, (long long)batch_images_);
  Progress progress;
  progress.first_step = first_step_ = step_;
  const int64_t bytes0 = comm_.bytes_moved(), calls0 = comm_.calls();
  // The steps' results stay on the device until they are wanted: at a progress line, before a
  // checkpoint and at the end (one read for all of them), so that a GPU never waits for the host
  // in between; on the CPU reading costs nothing and happens every step.
  std::vector<StepResult> pending;
  std::vector<std::pair<int64_t, int64_t>> pending_at;  // (step, images) of each
  const bool read_every_step = !dev_.is_cuda();
  auto drain = [&]() {
    read_step_results(pending);
    bool ok = true;
    for (size_t i = 0; i < pending.size() && ok; ++i) {
      const StepResult& r = pending[i];
      if (!r.finite) {
        ok = skip_nonfinite(r.loss, pending_at[i].first);
        continue;
      }
      if (!r.applied) {  // fp16 overflow
        ++overflows_;
        ++progress.overflows;
      }
      progress.add(r.loss, pending_at[i].second);
    }
    pending.clear();
    pending_at.clear();
    return ok;
  };
  while (step_ < total_steps_) {
    TwoViewBatch batch = next_batch();
    const int64_t B = batch.crops[0].size(0);
    if (!a_.save_batch.empty() && lead()) {  // rank 0's share
      write_batch_file(a_.save_batch, batch);
      std::printf("recorded this batch in %s\n", a_.save_batch.c_str());
      a_.save_batch.clear();
    }
    const double lr =
        lr_at(step_, epoch_steps_total_, warmup_steps_, lr_peak_, cfg_.warmup_multiplier);
    const double m = teacher_momentum_at(step_, epoch_steps_total_, cfg_.teacher_momentum);
    if (cfg_.warmup_teacher_temp_epochs > 0)
      train_->model().set_distill_teacher_temp(teacher_temp_at(
          step_, int64_t(std::llround(cfg_.warmup_teacher_temp_epochs * double(steps_per_epoch_))),
          cfg_.warmup_teacher_temp, cfg_.teacher_temp));
    pending.push_back(train_->run(batch, lr, m));
    if (train_->graph_note() != graph_note_) {  // the CUDA graph's fate, said once
      graph_note_ = train_->graph_note();
      std::printf("%s\n", graph_note_.c_str());
    }
    pending_at.emplace_back(step_, B * comm_.world());
    ++step_;
    // the same steps on every rank: the values are the ranks' mean, so all stop together
    const bool print =
        step_ % cfg_.print_freq == 0 || step_ == total_steps_ || step_ == first_step_ + 1;
    const bool epoch_end = step_ % steps_per_epoch_ == 0 && !fixed_;
    if ((read_every_step || print || epoch_end) && !drain()) return 1;
    if (lead() && print)
      progress.print(step_, total_steps_, steps_per_epoch_, lr, m, train_->scaler(), metrics);
    if (epoch_end) end_of_epoch();
  }
  seconds_ = std::chrono::duration<double>(Clock::now() - progress.start).count();
  comm_bytes_ = comm_.bytes_moved() - bytes0;
  comm_calls_ = comm_.calls() - calls0;
  save((fs::path(cfg_.output_dir) / "final.safetensors").string());
  draw_slots("slots_final.png");
  return 0;
}

// The summary lines, the final grouping score and the loader's unreadable files.
void Run::report() {
  std::printf("done: %lld steps in %s (%lld skipped for a non-finite loss)\n",
              (long long)(step_ - first_step_), fmt_time(seconds_).c_str(), (long long)skipped_);
  const int64_t steps = step_ - first_step_;
  if (comm_.world() > 1 && steps > 0)
    std::printf("data-parallel: each step put %.3f MB into %.1f collectives on rank 0 "
                "(gradients, SyncBN sums, slot keys and masks, center, loss)\n",
                double(comm_bytes_) / double(steps) / 1e6, double(comm_calls_) / double(steps));
  if (const GradientBuckets* gb = train_->gradient_buckets(); gb && steps > 0)
    std::printf(
        "data-parallel: gradients averaged in %zu buckets of at most %g MB (bucket_mb), "
        "%d started during the last step's backward\n",
        gb->buckets().size(), double(gb->bucket_bytes()) / double(1 << 20),
        gb->started_during_backward());
  if (const GradScaler* scaler = train_->scaler())
    std::printf("fp16: loss scale %.0f at the end; %lld of these steps overflowed in fp16 and were "
                "not applied (normal while the scale settles)\n",
                scaler->current_scale(), (long long)overflows_);
  if (scorer_) score_now("at the end");
  draw_curves();
  if (loader_) {
    data::LoaderStats ls = loader_->stats();
    if (ls.bad_files)
      std::printf("skipped %lld unreadable files (first: %s)\n", (long long)ls.bad_files,
                  ls.bad_examples.empty() ? "?" : ls.bad_examples[0].c_str());
  }
}

// One process, or rank comm.rank() of several.
int train(TrainArgs a, Communicator& comm) {
  Run run(std::move(a), comm);
  run.check_same_config();
  run.setup();
  run.restore();
  run.setup_data();
  run.setup_eval();
  if (run.score_only()) {
    run.report_score_only();
    return 0;
  }
  if (int rc = run.loop()) return rc;
  run.report();
  return 0;
}

}  // namespace

int cmd_train(const Args& args) {
  TrainArgs a;
  if (std::optional<int> done = parse_train_args(args, a)) return *done;
  std::unique_ptr<Communicator> comm = make_communicator_from_env();
  if (comm->world() == 1) return train(std::move(a), *comm);
  // Only rank 0 talks on stdout. An error on any rank ends every rank at once (MPI_Abort through
  // the launcher), instead of leaving the others to wait for a collective it will never join.
  if (comm->rank() != 0 && !std::freopen("/dev/null", "w", stdout))
    std::fprintf(stderr, "slotcon train (rank %d): cannot silence stdout\n", comm->rank());
  int rc = 0;
  try {
    rc = train(std::move(a), *comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slotcon train: error on rank %d of %d: %s\n", comm->rank(),
                 comm->world(), e.what());
    comm->abort(1);
    return 1;
  }
  return rc;  // a non-finite loss stops every rank at the same step (the loss is their mean)
}

}  // namespace app
}  // namespace sc
