// slotcon train: SlotCon pre-training on one device (SLOTCON.md §2–§7).
//
//   slotcon train [--config FILE] [--key value ...] [--resume FILE] [--no-auto-resume]
//                 [--init FILE] [--batch-file FILE] [--save-batch FILE] [--steps N]
//
// Every step: teacher EMA update (before its forward), the loss with the teacher in train mode,
// backward, LARS or SGD, per-step lr (warm-up then cosine) and teacher momentum, the center
// update. Progress every print_freq steps; metrics as JSON lines in output_dir/metrics.jsonl;
// checkpoints every save_freq epochs and at the end (atomic); auto-resume from the newest good
// checkpoint in output_dir.
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "apps/commands.h"
#include "apps/slot_picture.h"
#include "data/loader.h"
#include "data/scenes.h"
#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "kernels/parallel.h"
#include "model/batch_file.h"
#include "model/checkpoint.h"
#include "model/grouping_score.h"
#include "model/schedule.h"
#include "model/slotcon.h"
#include "model/train_config.h"

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
      "  --resume FILE       resume from this checkpoint\n"
      "  --no-auto-resume    do not resume from the newest good checkpoint in output_dir\n"
      "  --init FILE         initialise the model from a state file with the reference names\n"
      "  --batch-file FILE   replay this recorded batch (crops.0/1, coords.0/1, flags.0/1) every\n"
      "                      step instead of the loader\n"
      "  --save-batch FILE   record the first batch trained on as such a batch file (for\n"
      "                      replays, and comparisons with bench/train_step_torch.py)\n"
      "  --steps N           stop after N steps and write the full state to\n"
      "                      output_dir/final.safetensors\n"
      "  --steps 0           only print the grouping score of the initial / resumed state\n\n"
      "environment: SLOTCON_NUM_THREADS = threads of the CPU ops (default: the CPUs it may use);\n"
      "OPENBLAS_NUM_THREADS = threads of the CPU matrix products (OpenBLAS's default: every "
      "core);\nOPENBLAS_THREAD_TIMEOUT = how long idle BLAS threads spin (slotcon sets 4 when "
      "unset)\n\n"
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

// Optimizer over the student's parameters, whichever kind the config names.
struct Optimizer {
  std::optional<LARS> lars;
  std::optional<SGD> sgd;
  void set_lr(double lr) { lars ? lars->set_lr(lr) : sgd->set_lr(lr); }
  void step() { lars ? lars->step() : sgd->step(); }
  void zero_grad() { lars ? lars->zero_grad() : sgd->zero_grad(); }
  std::vector<Tensor>& state() { return lars ? lars->state() : sgd->state(); }
};

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

}  // namespace

int cmd_train(const Args& args_in) {
  Args args = args_in;
  TrainConfig cfg;
  std::string resume, init, batch_file, save_batch;
  bool auto_resume = true;
  int64_t steps_flag = -1;
  // --config first, so that command-line keys override the file whatever their order.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      train_usage();
      return 0;
    }
    if (args[i] == "--config") {
      SC_CHECK(i + 1 < args.size(), "--config needs a file");
      cfg = load_config_file(args[i + 1]);
      args.erase(args.begin() + long(i), args.begin() + long(i) + 2);
      break;
    }
  }
  Args rest = apply_overrides(cfg, args);
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& a = rest[i];
    auto value = [&]() -> std::string { return option_value(rest, &i); };
    if (a == "--resume") resume = value();
    else if (a == "--init") init = value();
    else if (a == "--batch-file") batch_file = value();
    else if (a == "--save-batch") save_batch = value();
    else if (a == "--steps") steps_flag = parse_count(a, value());
    else if (a == "--no-auto-resume") auto_resume = false;
    else {
      std::fprintf(stderr, "slotcon train: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (steps_flag > 0) cfg.max_steps = steps_flag;
  const bool score_only = steps_flag == 0;
  if (!batch_file.empty() && cfg.dataset == "folder" && cfg.data_dir.empty())
    cfg.dataset = "synthetic";  // the loader is not used
  cfg.validate();

  // ---- device and precision ----
  const Device dev = choose_device(cfg.device, "device");
  std::string precision = cfg.precision == "auto" ? (dev.is_cuda() ? "bf16" : "fp32") : cfg.precision;
  SC_CHECK(dev.is_cuda() || precision == "fp32", "precision '", precision,
           "' needs a GPU; the CPU trains in fp32");
  const DType compute = precision == "bf16"   ? DType::BF16
                        : precision == "fp16" ? DType::F16
                                              : DType::F32;
  // fp16: dynamic loss scaling (GradScaler's defaults); bf16 and fp32 need none
  std::optional<GradScaler> scaler;
  if (precision == "fp16") scaler.emplace();

  if (cfg.dim_out > cfg.num_prototypes)
    std::printf("note: dim_out (%lld) > num_prototypes (%lld): the prototypes cannot span the slot "
                "space, and pixel features orthogonal to all of them get a uniform assignment, "
                "a collapse short runs fall into (the authors always have K >= D)\n",
                (long long)cfg.dim_out, (long long)cfg.num_prototypes);
  check_output_dir(cfg.output_dir);
  const int nt = cpu_threads();
  const std::string dev_detail = dev.is_cuda()
                                     ? " (" + cuda_device_name(0) + ")"
                                     : str_cat(" (", nt, nt == 1 ? " thread)" : " threads)");
  std::printf("slotcon train: %s on %s%s, precision %s, output %s\n", cfg.arch.c_str(),
              dev.str().c_str(), dev_detail.c_str(), precision.c_str(), cfg.output_dir.c_str());

  // ---- the checkpoint to resume from: read and compared with this run's config before the
  // model is built, so that one that does not fit is refused at once ----
  std::optional<Checkpoint> ckpt;
  if (resume.empty() && auto_resume) {
    std::vector<std::string> warn;
    resume = find_latest_checkpoint(cfg.output_dir, &warn);
    for (auto& w : warn) std::printf("warning: %s\n", w.c_str());
  }
  if (!resume.empty()) {
    ckpt = load_checkpoint(resume);
    for (const std::string& d : check_resume_config(ckpt->info.config_json, cfg, resume))
      std::printf("note: resuming with a changed setting: %s\n", d.c_str());
  }

  // ---- model and optimizer ----
  SlotConModel model(cfg, dev, cfg.seed);
  model.train();
  NamedTensors params = model.student_parameters();
  std::vector<Tensor> ptensors;
  for (auto& kv : params) ptensors.push_back(kv.second);
  Optimizer opt;  // the learning rate is set every step
  if (cfg.optimizer == "lars")
    opt.lars.emplace(ptensors, LARSOptions{0.0, cfg.momentum, cfg.weight_decay, 0.001});
  else
    opt.sgd.emplace(ptensors, SGDOptions{0.0, cfg.momentum, cfg.weight_decay});

  // ---- state: init, resume ----
  int64_t step = 0;
  if (!init.empty()) {
    SafetensorsFile f = read_safetensors(init);
    try {
      model.load_state_dict(f.tensors, /*strict=*/true, {"num_batches_tracked"});
    } catch (const Error& e) {
      throw Error(str_cat(init, ": ", e.what()));
    }
    std::printf("initialised from %s (%zu tensors)\n", init.c_str(), f.tensors.size());
  }
  if (ckpt) {
    Checkpoint& c = *ckpt;
    try {
      model.load_state_dict(c.model, true, {"num_batches_tracked"});
    } catch (const Error& e) {
      throw Error(str_cat(resume, ": ", e.what()));
    }
    std::vector<Tensor>& st = opt.state();
    size_t missing = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      auto it = c.optimizer.find(params[i].first);
      if (it == c.optimizer.end()) {
        ++missing;
        continue;
      }
      SC_CHECK(it->second.shape() == params[i].second.shape(), resume, ": optimizer state of ",
               params[i].first, " has shape ", shape_str(it->second.shape()), ", the parameter ",
               shape_str(params[i].second.shape()));
      st[i] = cast(it->second, params[i].second.dtype()).to(dev);
    }
    if (missing && c.info.step > 0)
      std::printf("warning: %s has no optimizer state for %zu of %zu parameters; their momentum "
                  "starts at zero\n", resume.c_str(), missing, params.size());
    step = c.info.step;
    if (scaler && c.info.loss_scale > 0) scaler->load_state(c.info.loss_scale, c.info.loss_scale_growth);
    std::printf("resumed from %s at step %lld (epoch %lld)\n", resume.c_str(),
                (long long)c.info.step, (long long)c.info.epoch);
    ckpt.reset();  // its tensors are copied into the model and optimizer
  }

  // NHWC backbone (after loading: the loads copy values into whatever layout the tensors have)
  const bool nhwc = cfg.channels_last == "on" || (cfg.channels_last == "auto" && dev.is_cuda());
  if (nhwc) model.set_channels_last(true);

  // ---- data: the loader's stream starts at the resumed position ----
  std::unique_ptr<data::DataLoader> loader;
  std::optional<TwoViewBatch> fixed;
  int64_t steps_per_epoch = 1;
  if (!batch_file.empty()) {
    fixed = read_batch_file(batch_file);
    for (int v = 0; v < 2; ++v) {
      fixed->crops[v] = cast(fixed->crops[v], compute).to(dev);
      fixed->coords[v] = fixed->coords[v].to(dev);
      fixed->flags[v] = fixed->flags[v].to(dev);
    }
    std::printf("replaying the batch in %s every step (B = %lld)\n", batch_file.c_str(),
                (long long)fixed->crops[0].size(0));
  } else {
    data::LoaderConfig lc;
    lc.synthetic = cfg.dataset == "synthetic";
    lc.data_dir = cfg.data_dir;
    lc.synthetic_count = cfg.synthetic_images;
    lc.synthetic_seed = cfg.seed;
    lc.image_size = int(cfg.image_size);
    lc.min_scale = cfg.min_scale;
    lc.batch_size = int(cfg.batch_size);
    lc.num_workers = int(cfg.num_workers);
    lc.seed = cfg.seed;
    lc.pin_memory = dev.is_cuda();
    std::shared_ptr<const data::Dataset> dataset = data::make_dataset(lc);
    steps_per_epoch = dataset->size() / lc.batch_size;  // one rank, drop_last
    SC_CHECK(steps_per_epoch > 0, "the dataset has fewer images (", dataset->size(),
             ") than one batch (", cfg.batch_size, ")");
    lc.start_epoch = step / steps_per_epoch;
    loader = std::make_unique<data::DataLoader>(dataset, lc);
    SC_CHECK(loader->size() == steps_per_epoch, "loader batches per epoch disagree");
    for (int64_t i = 0; i < step % steps_per_epoch; ++i) loader->next_batch();
  }
  // The schedules always span the whole planned run (epochs x steps per epoch); max_steps only
  // stops early, so that a run stopped and resumed follows the same schedule.
  const int64_t epoch_steps_total = cfg.epochs * steps_per_epoch;
  const int64_t total_steps =
      cfg.max_steps > 0 ? std::min(cfg.max_steps, epoch_steps_total) : epoch_steps_total;
  const int64_t warmup_steps = int64_t(std::llround(cfg.warmup_epoch * double(steps_per_epoch)));
  // lr = base_lr x global batch / 256 (one device: the batch actually trained on)
  const int64_t batch_images = fixed ? fixed->crops[0].size(0) : cfg.batch_size;
  const double lr_peak = cfg.base_lr * double(batch_images) / 256.0;

  // ---- grouping score on held-out synthetic scenes ----
  std::optional<Scorer> scorer;
  if (cfg.dataset == "synthetic" && cfg.score_images > 0) {
    Scorer s;
    s.size = int(cfg.score_size > 0 ? cfg.score_size : cfg.image_size);
    s.count = cfg.score_images;
    // scenes after the training set: never trained on
    s.scenes = data::render_scene_batch(cfg.seed, cfg.synthetic_images, cfg.score_images, s.size);
    scorer = std::move(s);
    std::printf("grouping score: the teacher's arg-max prototype per pixel vs the scene classes "
                "on %lld held-out scenes at %d px (one-to-one matching, mean IoU over %d classes)\n",
                (long long)scorer->count, scorer->size, data::kSceneClasses);
  }
  // Scores the teacher now: a line on stdout and one in output_dir/grouping.jsonl.
  auto score_now = [&](const std::string& when) {
    const GroupingScore g = grouping_eval(model, *scorer, dev);
    print_score(when.c_str(), step, g, cfg.num_prototypes);
    log_score(cfg.output_dir, step, step / steps_per_epoch, g);
  };
  if (scorer) score_now("at the start");

  // ---- slot pictures ----
  std::optional<PictureImages> pictures;
  if (cfg.slot_images > 0) {
    const int size = int(cfg.score_size > 0 ? cfg.score_size : cfg.image_size);
    try {
      if (cfg.dataset == "synthetic")
        pictures = picture_scenes(cfg.seed, cfg.synthetic_images, cfg.slot_images, size);
      else
        pictures = picture_folder_images(data::split_paths(cfg.data_dir), cfg.slot_images, size,
                                         nullptr);
    } catch (const std::exception& e) {
      std::printf("warning: no slot pictures: %s\n", e.what());
    }
  }
  // Draws them into output_dir/<name>; a failure (e.g. a full disk) is reported, not fatal.
  auto draw_slots = [&](const std::string& name) {
    if (!pictures) return;
    const std::string path = (fs::path(cfg.output_dir) / name).string();
    try {
      const int used = write_slot_picture(model, *pictures, dev, kSlotPictureCols, path);
      std::printf("slots drawn in %s (%d prototypes in use)\n", path.c_str(), used);
    } catch (const std::exception& e) {
      std::printf("warning: could not draw the slots in %s: %s\n", path.c_str(), e.what());
    }
  };
  if (step == 0) draw_slots("slots_epoch_0000.png");

  if (score_only) {
    if (!scorer)
      std::printf("--steps 0: nothing to do (the grouping score needs dataset 'synthetic' and "
                  "score_images > 0)\n");
    return 0;
  }

  // ---- the loop ----
  std::ofstream metrics(fs::path(cfg.output_dir) / "metrics.jsonl", std::ios::app);
  std::printf("%lld steps (%lld per epoch), lr %.4g after %lld warm-up steps, batch %lld\n",
              (long long)total_steps, (long long)steps_per_epoch, lr_peak, (long long)warmup_steps,
              (long long)batch_images);
  auto t_start = Clock::now();
  auto t_last = t_start;
  int64_t images_since = 0, first_step = step, skipped = 0, overflows = 0, overflows_since = 0;
  double sum_loss = 0, sum_group = 0, sum_contrast = 0;
  int64_t n_sum = 0;
  auto save = [&](const std::string& path) {
    NamedTensors opt_state;
    for (size_t i = 0; i < params.size(); ++i)
      if (opt.state()[i].defined()) opt_state.emplace_back(params[i].first, opt.state()[i]);
    CheckpointInfo info{step / steps_per_epoch, step, cfg.to_json_text()};
    if (scaler) {
      info.loss_scale = scaler->current_scale();
      info.loss_scale_growth = scaler->growth_tracker();
    }
    save_checkpoint(path, model.state_dict(), opt_state, info);
    std::printf("saved %s\n", path.c_str());
    std::vector<std::string> warn;
    for (const std::string& old : prune_checkpoints(cfg.output_dir, cfg.keep_checkpoints, &warn))
      std::printf("deleted %s (keep_checkpoints %lld)\n", old.c_str(),
                  (long long)cfg.keep_checkpoints);
    for (const std::string& w : warn) std::printf("warning: %s\n", w.c_str());
  };
  while (step < total_steps) {
    TwoViewBatch batch;
    if (fixed) {
      batch = *fixed;
    } else {
      data::Batch b = loader->next_batch();
      for (int v = 0; v < 2; ++v) {
        batch.crops[v] = cast(b.crops[v].to(dev), compute);
        batch.coords[v] = b.coords[v].to(dev);
        batch.flags[v] = b.flags[v].to(dev);
      }
    }
    const int64_t B = batch.crops[0].size(0);
    if (!save_batch.empty()) {
      write_batch_file(save_batch, batch);
      std::printf("recorded this batch in %s\n", save_batch.c_str());
      save_batch.clear();
    }
    const double lr =
        lr_at(step, epoch_steps_total, warmup_steps, lr_peak, cfg.warmup_multiplier);
    const double m = teacher_momentum_at(step, epoch_steps_total, cfg.teacher_momentum);
    opt.set_lr(lr);
    model.momentum_update(m);
    StepLoss loss = model.forward(batch, compute);
    const double total = loss.value;
    if (!std::isfinite(total) || !std::isfinite(loss.group) || !std::isfinite(loss.contrast)) {
      const char* part = !std::isfinite(loss.group) ? "group loss"
                         : !std::isfinite(loss.contrast) ? "contrast loss" : "total loss";
      if (cfg.nonfinite == "stop") {
        std::fprintf(stderr,
                     "slotcon train: the %s is not finite at step %lld (epoch %lld); stopping. "
                     "No checkpoint was written for this step.\n",
                     part, (long long)step, (long long)(step / steps_per_epoch));
        return 1;
      }
      std::printf("warning: the %s is not finite at step %lld; skipping the step\n", part,
                  (long long)step);
      ++skipped;
      ++step;
      continue;
    }
    opt.zero_grad();
    if (scaler) {
      scaler->scale(loss.total).backward();
      const bool finite = scaler->unscale_(ptensors);
      if (finite) {
        opt.step();  // an overflowed step changes nothing but the scale
      } else {
        ++overflows;
        ++overflows_since;
      }
      scaler->update(finite);
    } else {
      loss.total.backward();
      opt.step();
    }
    ++step;
    images_since += B;
    sum_loss += total;
    sum_group += loss.group;
    sum_contrast += loss.contrast;
    ++n_sum;
    const bool epoch_end = step % steps_per_epoch == 0;
    if (step % cfg.print_freq == 0 || step == total_steps || step == first_step + 1) {
      auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      const double el = std::chrono::duration<double>(now - t_start).count();
      const double ips = dt > 0 ? double(images_since) / dt : 0;
      const double eta = el / double(step - first_step) * double(total_steps - step);
      // fp16: the loss scale, and how many steps since the last line overflowed (not applied)
      const std::string fp16 =
          scaler ? str_cat("  scale ", int64_t(scaler->current_scale()),
                           overflows_since ? str_cat(" (", overflows_since, " overflowed)") : "")
                 : std::string();
      std::printf("epoch %lld step %lld/%lld  loss %.4f (group %.4f, contrast %.4f)  lr %.4g  "
                  "m %.5f  %.1f img/s  eta %s%s\n",
                  (long long)(step - 1) / steps_per_epoch, (long long)step, (long long)total_steps,
                  sum_loss / n_sum, sum_group / n_sum, sum_contrast / n_sum, lr, m, ips,
                  fmt_time(eta).c_str(), fp16.c_str());
      overflows_since = 0;
      std::fflush(stdout);
      nlohmann::json j = {{"epoch", (step - 1) / steps_per_epoch}, {"step", step},
                          {"loss", sum_loss / n_sum}, {"group", sum_group / n_sum},
                          {"contrast", sum_contrast / n_sum}, {"lr", lr}, {"momentum", m},
                          {"images_per_s", ips}};
      if (scaler) j["loss_scale"] = scaler->current_scale();
      metrics << j.dump() << "\n";
      metrics.flush();
      t_last = now;
      images_since = 0;
      sum_loss = sum_group = sum_contrast = 0;
      n_sum = 0;
    }
    if (epoch_end && !fixed) {
      const int64_t epoch = step / steps_per_epoch;
      if (epoch % cfg.save_freq == 0 || step == epoch_steps_total) {
        save(checkpoint_path(cfg.output_dir, epoch));
        char name[48];
        std::snprintf(name, sizeof name, "slots_epoch_%04lld.png", (long long)epoch);
        draw_slots(name);
        if (scorer && step < total_steps) score_now(str_cat("after epoch ", epoch));
      }
    }
  }
  const double el = std::chrono::duration<double>(Clock::now() - t_start).count();
  const std::string final_path = (fs::path(cfg.output_dir) / "final.safetensors").string();
  save(final_path);
  draw_slots("slots_final.png");
  std::printf("done: %lld steps in %s (%lld skipped for a non-finite loss)\n",
              (long long)(step - first_step), fmt_time(el).c_str(), (long long)skipped);
  if (scaler)
    std::printf("fp16: loss scale %.0f at the end; %lld of these steps overflowed in fp16 and were "
                "not applied (normal while the scale settles)\n",
                scaler->current_scale(), (long long)overflows);
  if (scorer) score_now("at the end");
  if (loader) {
    data::LoaderStats ls = loader->stats();
    if (ls.bad_files)
      std::printf("skipped %lld unreadable files (first: %s)\n", (long long)ls.bad_files,
                  ls.bad_examples.empty() ? "?" : ls.bad_examples[0].c_str());
  }
  return 0;
}

}  // namespace app
}  // namespace sc
