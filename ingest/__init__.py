"""The device door: MQTT -> validated readings -> Kafka, with a dead-letter topic."""
