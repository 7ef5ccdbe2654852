#include "app/tracking_thread.h"

namespace kleak {

TrackingThread::TrackingThread(core::Pipeline& pipeline) : pipeline_(pipeline), current_(kBatchRecords) {
    thread_ = std::thread([this] { run(); });
    pipeline_.set_release_handoff(this);
}

TrackingThread::~TrackingThread() { finish(); }

std::span<core::Event> TrackingThread::room() {
    if (current_size_ == current_.size()) hand_over();
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
    changed_.wait(lock, [this] { return queued_.size() < kMaxQueued; });
    queued_.push_back(std::move(current_));
    if (!spare_.empty()) {
        current_ = std::move(spare_.back());
        spare_.pop_back();
    } else {
        current_ = Batch();
    }
    lock.unlock();
    changed_.notify_all();
    current_.resize(kBatchRecords);
    current_size_ = 0;
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
        pipeline_.track(batch);
        std::lock_guard lock(mutex_);
        spare_.push_back(std::move(batch));
    }
}

void TrackingThread::finish() {
    if (finished_) return;
    finished_ = true;
    hand_over();
    {
        std::lock_guard lock(mutex_);
        done_ = true;
    }
    changed_.notify_all();
    thread_.join();
    pipeline_.set_release_handoff(nullptr);
}

}  // namespace kleak
