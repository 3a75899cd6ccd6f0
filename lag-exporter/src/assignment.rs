//! Which partitions a consumer-group member owns: the member assignment of Kafka's consumer
//! protocol (`ConsumerProtocolAssignment`: version, then topics with their partitions, then
//! user data), as DescribeGroups returns it. Pure; every length is checked against the bytes
//! left, so a malformed assignment is an error, never a panic or a huge allocation.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed member assignment: {0}")]
pub struct AssignmentError(&'static str);

/// `(topic, partition)` pairs the assignment names.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, i32)>, AssignmentError> {
    if bytes.is_empty() {
        // A member that has not been given anything yet.
        return Ok(Vec::new());
    }
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.count(2)?;
    let mut owned = Vec::new();
    for _ in 0..topics {
        let len =
            usize::try_from(r.i16()?).map_err(|_| AssignmentError("negative topic length"))?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| AssignmentError("topic name is not UTF-8"))?
            .to_owned();
        for _ in 0..r.count(4)? {
            owned.push((name.clone(), r.i32()?));
        }
    }
    // User data and later fields do not matter here.
    Ok(owned)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AssignmentError> {
        if self.0.len() < n {
            return Err(AssignmentError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, AssignmentError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, AssignmentError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array count whose elements take at least `min_size` bytes each: bounded by the bytes
    /// left.
    fn count(&mut self, min_size: usize) -> Result<usize, AssignmentError> {
        let n = usize::try_from(self.i32()?).map_err(|_| AssignmentError("negative count"))?;
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(AssignmentError("count larger than the bytes left"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut out = 1i16.to_be_bytes().to_vec();
        out.extend((topics.len() as i32).to_be_bytes());
        for (name, partitions) in topics {
            out.extend((name.len() as i16).to_be_bytes());
            out.extend(name.as_bytes());
            out.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend(p.to_be_bytes());
            }
        }
        out.extend((-1i32).to_be_bytes()); // null user data
        out
    }

    #[test]
    fn reads_topics_and_partitions() {
        let bytes = encode(&[("orders", &[0, 2]), ("notifications", &[1])]);
        assert_eq!(
            parse(&bytes).expect("well formed"),
            vec![
                ("orders".to_owned(), 0),
                ("orders".to_owned(), 2),
                ("notifications".to_owned(), 1)
            ]
        );
        assert_eq!(parse(&[]).expect("empty"), vec![]);
    }

    #[test]
    fn malformed_assignments_are_errors() {
        let bytes = encode(&[("orders", &[0, 2])]);
        assert!(
            parse(&bytes[..bytes.len() - 9]).is_err(),
            "truncated partition list"
        );
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend(i32::MAX.to_be_bytes());
        assert_eq!(
            parse(&huge),
            Err(AssignmentError("count larger than the bytes left"))
        );
        let mut negative = 0i16.to_be_bytes().to_vec();
        negative.extend((-5i32).to_be_bytes());
        assert!(parse(&negative).is_err());
    }
}
