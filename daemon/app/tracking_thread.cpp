#include "app/tracking_thread.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace kleak {

TrackingThread::TrackingThread(core::Pipeline& pipeline, TrackFn track)
    : pipeline_(pipeline), track_(std::move(track)), current_(kBatchRecords) {
    if (!track_) track_ = [this](std::span<const core::Event> batch) { pipeline_.track(batch); };
    thread_ = std::thread([this] { run(); });
    pipeline_.set_release_handoff(this);
}

TrackingThread::~TrackingThread() {
    try {
        finish();
    } catch (const std::exception& e) {
        spdlog::error("tracking the replayed records failed: {}", e.what());
    } catch (...) {
        spdlog::error("tracking the replayed records failed");
    }
}

std::span<core::Event> TrackingThread::room() {
    if (current_size_ == current_.size()) hand_over();
    // Never empty, even after a resize in hand_over() threw.
    if (current_.size() < kBatchRecords) current_.resize(kBatchRecords);
    return std::span(current_).subspan(current_size_);
}

void TrackingThread::filled(std::size_t n) {
    current_size_ += n;
    if (current_size_ == current_.size()) hand_over();
}

void TrackingThread::hand_over() {
    if (current_size_ == 0) return;
    current_.resize(current_size_);
    std::unique_lock lock(mutex_);
    // Bounded: a merging thread that runs ahead waits rather than queueing
    // the whole recording in memory.
    changed_.wait(lock, [this] { return queued_.size() < kMaxQueued || failure_; });
    if (failure_) {
        current_size_ = 0;  // nobody will track it
        if (std::exchange(failure_reported_, true)) return;
        std::rethrow_exception(failure_);
    }
    queued_.push_back(std::move(current_));
    if (!spare_.empty()) {
        current_ = std::move(spare_.back());
        spare_.pop_back();
    } else {
        current_ = Batch();
    }
    lock.unlock();
    changed_.notify_all();
    current_size_ = 0;  // first: if the resize throws, the batch handed over is not handed over again
    current_.resize(kBatchRecords);
}

void TrackingThread::run() {
    for (;;) {
        Batch batch;
        {
            std::unique_lock lock(mutex_);
            changed_.wait(lock, [this] { return !queued_.empty() || done_; });
            if (queued_.empty()) return;  // done_, and everything tracked
            batch = std::move(queued_.front());
            queued_.pop_front();
        }
        changed_.notify_all();
        try {
            track_(batch);
        } catch (...) {
            // Not std::terminate: the merging thread learns of it at its next
            // handover (or in finish()) and the command fails with the message.
            {
                std::lock_guard lock(mutex_);
                failure_ = std::current_exception();
                queued_.clear();
            }
            changed_.notify_all();
            return;
        }
        std::lock_guard lock(mutex_);
        spare_.push_back(std::move(batch));
    }
}

void TrackingThread::finish() {
    if (finished_) return;
    finished_ = true;
    std::exception_ptr error;
    try {
        hand_over();
    } catch (...) {
        error = std::current_exception();  // join first: a running std::thread must not be destroyed
    }
    {
        std::lock_guard lock(mutex_);
        done_ = true;
    }
    changed_.notify_all();
    thread_.join();
    pipeline_.set_release_handoff(nullptr);
    if (!error && !failure_reported_) error = failure_;
    failure_reported_ = true;
    if (error) std::rethrow_exception(error);
}

}  // namespace kleak
