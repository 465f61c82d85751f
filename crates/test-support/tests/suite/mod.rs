mod bin;
mod faults;
mod lifecycle;
mod openai;
mod providers;
