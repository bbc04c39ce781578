//! The geospatial predicates and shape functions as HarperDB 4.7 computes them
//! (docs/operations-api.md, "SQL", "Geospatial"): `geoContains` (turf 6.5 `booleanContains`), `geoEqual` (`booleanEqual`:
//! geojson-equality at 6 decimals after `cleanCoords`), `geoCrosses` (not `booleanDisjoint`),
//! `geoDifference` (`difference`: polygon clipping) and `geoCircle` (`circle`, 64 steps).
//! Each is a port of turf's algorithm, so edge cases (boundaries, pairs of types turf does not
//! support, rings of fewer than four positions) answer as HarperDB does: where turf throws,
//! HarperDB answers false (predicates) or nothing (shapes), and so does this.

use geo::BooleanOps;

use super::eval::as_f64;
use crate::value::{Object, Value};

type Pt = (f64, f64);

/// A failure where turf throws; the callers turn it into false or NULL, as HarperDB does.
struct Thrown;

type R<T> = Result<T, Thrown>;

fn kind(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// turf's `getGeom`: a Feature's geometry, anything else as it is.
fn geom(v: &Value) -> R<&Value> {
    if kind(v) == Some("Feature") {
        match v.get("geometry") {
            Some(g @ Value::Object(_)) => Ok(g),
            _ => Err(Thrown),
        }
    } else {
        Ok(v)
    }
}

fn coords(g: &Value) -> R<&[Value]> {
    match g.get("coordinates") {
        Some(Value::Array(c)) => Ok(c),
        _ => Err(Thrown),
    }
}

fn pos(v: &Value) -> R<Pt> {
    match v {
        Value::Array(c) if c.len() >= 2 => match (as_num(&c[0]), as_num(&c[1])) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(Thrown),
        },
        _ => Err(Thrown),
    }
}

fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn line(v: &Value) -> R<Vec<Pt>> {
    match v {
        Value::Array(ps) => ps.iter().map(pos).collect(),
        _ => Err(Thrown),
    }
}

fn lines(v: &[Value]) -> R<Vec<Vec<Pt>>> {
    v.iter().map(line).collect()
}

/// turf's `getCoord`: a Point feature, a Point, or `[x, y]`.
fn get_coord(v: &Value) -> R<Pt> {
    match v {
        Value::Array(_) => pos(v),
        _ => match kind(v) {
            Some("Feature") => {
                let g = geom(v)?;
                if kind(g) == Some("Point") {
                    pos(g.get("coordinates").ok_or(Thrown)?)
                } else {
                    Err(Thrown)
                }
            }
            Some("Point") => pos(v.get("coordinates").ok_or(Thrown)?),
            _ => Err(Thrown),
        },
    }
}

/// Every position of a geometry (turf's `coordEach`), for bounding boxes.
fn all_positions(c: &Value, out: &mut Vec<Pt>, depth: u32) -> R<()> {
    if depth > 4 {
        return Err(Thrown);
    }
    match c {
        Value::Array(a) if a.first().is_some_and(|f| !matches!(f, Value::Array(_))) => {
            out.push(pos(c)?);
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| all_positions(x, out, depth + 1)),
        _ => Err(Thrown),
    }
}

fn bbox(g: &Value) -> R<[f64; 4]> {
    let mut ps = Vec::new();
    all_positions(g.get("coordinates").ok_or(Thrown)?, &mut ps, 0)?;
    Ok(ps.iter().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |b, p| [b[0].min(p.0), b[1].min(p.1), b[2].max(p.0), b[3].max(p.1)],
    ))
}

/// turf's `inRing` (ray casting; a point on an edge is `!ignore_boundary`).
fn in_ring(pt: Pt, ring: &[Pt], ignore_boundary: bool) -> bool {
    let ring = match (ring.first(), ring.last()) {
        (Some(a), Some(b)) if a == b => &ring[..ring.len() - 1],
        _ => ring,
    };
    let mut inside = false;
    let n = ring.len();
    for i in 0..n {
        let j = if i == 0 { n - 1 } else { i - 1 };
        let (xi, yi) = ring[i];
        let (xj, yj) = ring[j];
        let on_boundary = pt.1 * (xi - xj) + yi * (xj - pt.0) + yj * (pt.0 - xi) == 0.0
            && (xi - pt.0) * (xj - pt.0) <= 0.0
            && (yi - pt.1) * (yj - pt.1) <= 0.0;
        if on_boundary {
            return !ignore_boundary;
        }
        if (yi > pt.1) != (yj > pt.1) && pt.0 < (xj - xi) * (pt.1 - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// turf's `booleanPointInPolygon` of a position in a Polygon or MultiPolygon (geometry or
/// feature); the polygon's own `bbox`, when it has one, is checked first.
fn point_in_polygon(pt: Pt, polygon: &Value, ignore_boundary: bool) -> R<bool> {
    if let Some(Value::Array(b)) = polygon.get("bbox") {
        let b: Vec<f64> = b.iter().filter_map(as_num).collect();
        if b.len() >= 4 && !(b[0] <= pt.0 && b[1] <= pt.1 && b[2] >= pt.0 && b[3] >= pt.1) {
            return Ok(false);
        }
    }
    let g = geom(polygon)?;
    let c = coords(g)?;
    let polys: Vec<Vec<Vec<Pt>>> = match kind(g) {
        Some("Polygon") => vec![lines(c)?],
        Some("MultiPolygon") => c
            .iter()
            .map(|p| match p {
                Value::Array(rs) => lines(rs),
                _ => Err(Thrown),
            })
            .collect::<R<_>>()?,
        _ => return Ok(false),
    };
    Ok(polys.iter().any(|rings| {
        rings.first().is_some_and(|outer| {
            in_ring(pt, outer, ignore_boundary)
                && !rings[1..]
                    .iter()
                    .any(|hole| in_ring(pt, hole, !ignore_boundary))
        })
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Ends {
    Keep,
    Start,
    End,
    Both,
}

/// turf's `isPointOnLineSegment` (boolean-point-on-line), exact (no epsilon).
fn on_segment(a: Pt, b: Pt, p: Pt, ends: Ends) -> bool {
    let (dxc, dyc) = (p.0 - a.0, p.1 - a.1);
    let (dxl, dyl) = (b.0 - a.0, b.1 - a.1);
    if dxc * dyl - dyc * dxl != 0.0 {
        return false;
    }
    let (lo_open, hi_open) = match ends {
        Ends::Keep => (false, false),
        Ends::Start => (true, false),
        Ends::End => (false, true),
        Ends::Both => (true, true),
    };
    // Along the longer axis; `lo_open`/`hi_open` refer to the segment's start and end.
    let within = |s: f64, e: f64, v: f64, forward: bool| {
        let (first, second) = if forward { (s, e) } else { (e, s) };
        let (first_open, second_open) = if forward {
            (lo_open, hi_open)
        } else {
            (hi_open, lo_open)
        };
        (if first_open { first < v } else { first <= v })
            && (if second_open { v < second } else { v <= second })
    };
    if dxl.abs() >= dyl.abs() {
        within(a.0, b.0, p.0, dxl > 0.0)
    } else {
        within(a.1, b.1, p.1, dyl > 0.0)
    }
}

/// turf's `booleanPointOnLine`.
fn point_on_line(p: Pt, l: &[Pt], ignore_end_vertices: bool) -> bool {
    let n = l.len();
    (0..n.saturating_sub(1)).any(|i| {
        let ends = if !ignore_end_vertices {
            Ends::Keep
        } else if i == 0 && i + 1 == n - 1 {
            Ends::Both
        } else if i == n - 2 {
            Ends::End
        } else if i == 0 {
            Ends::Start
        } else {
            Ends::Keep
        };
        on_segment(l[i], l[i + 1], p, ends)
    })
}

fn bbox_inside(outer: [f64; 4], inner: [f64; 4]) -> bool {
    !(outer[0] > inner[0] || outer[2] < inner[2] || outer[1] > inner[1] || outer[3] < inner[3])
}

/// turf's `booleanContains(a, b)`.
fn contains(a: &Value, b: &Value) -> R<bool> {
    let (g1, g2) = (geom(a)?, geom(b)?);
    let c1 = coords(g1)?;
    let c2 = coords(g2)?;
    let point2 = || pos(g2.get("coordinates").ok_or(Thrown)?);
    match (kind(g1).ok_or(Thrown)?, kind(g2).ok_or(Thrown)?) {
        ("Point", "Point") => Ok(pos(g1.get("coordinates").ok_or(Thrown)?)? == point2()?),
        ("MultiPoint", "Point") => Ok(line_of(c1)?.contains(&point2()?)),
        ("MultiPoint", "MultiPoint") => {
            let (m1, m2) = (line_of(c1)?, line_of(c2)?);
            Ok(m2.iter().all(|p| m1.contains(p)))
        }
        ("LineString", "Point") => Ok(point_on_line(point2()?, &line_of(c1)?, true)),
        ("LineString", "LineString") | ("LineString", "MultiPoint") => {
            let l = line_of(c1)?;
            let ps = line_of(c2)?;
            let mut interior = false;
            for p in ps {
                interior |= point_on_line(p, &l, true);
                if !point_on_line(p, &l, false) {
                    return Ok(false);
                }
            }
            Ok(interior)
        }
        ("Polygon", "Point") => point_in_polygon(point2()?, g1, true),
        ("Polygon", "LineString") => {
            if !bbox_inside(bbox(g1)?, bbox(g2)?) {
                return Ok(false);
            }
            let l = line_of(c2)?;
            for w in l.windows(2) {
                let mid = ((w[0].0 + w[1].0) / 2.0, (w[0].1 + w[1].1) / 2.0);
                if point_in_polygon(mid, g1, true)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        ("Polygon", "Polygon") => {
            if !bbox_inside(bbox(g1)?, bbox(g2)?) {
                return Ok(false);
            }
            for ring in lines(c2)? {
                for p in ring {
                    if !point_in_polygon(p, g1, false)? {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        }
        ("Polygon", "MultiPoint") => {
            for p in line_of(c2)? {
                if !point_in_polygon(p, g1, true)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => Err(Thrown),
    }
}

fn line_of(c: &[Value]) -> R<Vec<Pt>> {
    c.iter().map(pos).collect()
}

/// A single geometry after turf's `flattenEach`: a point, a line or a polygon's rings.
enum Flat {
    Point(Pt),
    Line(Vec<Pt>),
    Polygon(Vec<Vec<Pt>>),
}

fn flatten(v: &Value, out: &mut Vec<Flat>, depth: u32) -> R<()> {
    if depth > 64 {
        return Err(Thrown);
    }
    let list = |key: &str| match v.get(key) {
        Some(Value::Array(items)) => Ok(items.as_slice()),
        _ => Err(Thrown),
    };
    match kind(v).ok_or(Thrown)? {
        "FeatureCollection" => list("features")?
            .iter()
            .try_for_each(|f| flatten(f, out, depth + 1)),
        "Feature" => flatten(geom(v)?, out, depth + 1),
        "GeometryCollection" => list("geometries")?
            .iter()
            .try_for_each(|g| flatten(g, out, depth + 1)),
        "Point" => {
            out.push(Flat::Point(pos(v.get("coordinates").ok_or(Thrown)?)?));
            Ok(())
        }
        "MultiPoint" => {
            out.extend(line_of(coords(v)?)?.into_iter().map(Flat::Point));
            Ok(())
        }
        "LineString" => {
            out.push(Flat::Line(line_of(coords(v)?)?));
            Ok(())
        }
        "MultiLineString" => {
            out.extend(lines(coords(v)?)?.into_iter().map(Flat::Line));
            Ok(())
        }
        "Polygon" => {
            out.push(Flat::Polygon(lines(coords(v)?)?));
            Ok(())
        }
        "MultiPolygon" => coords(v)?.iter().try_for_each(|p| match p {
            Value::Array(rs) => {
                out.push(Flat::Polygon(lines(rs)?));
                Ok(())
            }
            _ => Err(Thrown),
        }),
        _ => Err(Thrown),
    }
}

/// turf's `intersects` of two segments (line-intersect): not parallel and crossing within both.
fn segments_cross(a: Pt, b: Pt, c: Pt, d: Pt) -> bool {
    let denom = (d.1 - c.1) * (b.0 - a.0) - (d.0 - c.0) * (b.1 - a.1);
    if denom == 0.0 {
        return false;
    }
    let ua = ((d.0 - c.0) * (a.1 - c.1) - (d.1 - c.1) * (a.0 - c.0)) / denom;
    let ub = ((b.0 - a.0) * (a.1 - c.1) - (b.1 - a.1) * (a.0 - c.0)) / denom;
    (0.0..=1.0).contains(&ua) && (0.0..=1.0).contains(&ub)
}

/// turf's `lineIntersect` has a result: some segment of `a` crosses some segment of `b`.
fn lines_intersect(a: &[&[Pt]], b: &[&[Pt]]) -> bool {
    a.iter().flat_map(|l| l.windows(2)).any(|s| {
        b.iter()
            .flat_map(|l| l.windows(2))
            .any(|t| segments_cross(s[0], s[1], t[0], t[1]))
    })
}

fn polygon_value(rings: &[Vec<Pt>]) -> Value {
    let ring = |r: &Vec<Pt>| {
        Value::Array(
            r.iter()
                .map(|p| Value::Array(vec![Value::Float(p.0), Value::Float(p.1)]))
                .collect(),
        )
    };
    let mut o = Object::new();
    o.insert("type", Value::String("Polygon".into()));
    o.insert(
        "coordinates",
        Value::Array(rings.iter().map(ring).collect()),
    );
    Value::Object(o)
}

fn pip(p: Pt, rings: &[Vec<Pt>]) -> R<bool> {
    point_in_polygon(p, &polygon_value(rings), false)
}

/// turf's `disjoint` of two flattened geometries (boolean-disjoint).
fn disjoint_one(a: &Flat, b: &Flat) -> R<bool> {
    let line_in_poly = |rings: &[Vec<Pt>], l: &[Pt]| -> R<bool> {
        for p in l {
            if pip(*p, rings)? {
                return Ok(true);
            }
        }
        let rs: Vec<&[Pt]> = rings.iter().map(Vec::as_slice).collect();
        Ok(lines_intersect(&[l], &rs))
    };
    let on_line = |l: &[Pt], p: Pt| l.windows(2).any(|s| on_segment(s[0], s[1], p, Ends::Keep));
    Ok(!match (a, b) {
        (Flat::Point(p), Flat::Point(q)) => p == q,
        (Flat::Point(p), Flat::Line(l)) | (Flat::Line(l), Flat::Point(p)) => on_line(l, *p),
        (Flat::Point(p), Flat::Polygon(rs)) | (Flat::Polygon(rs), Flat::Point(p)) => pip(*p, rs)?,
        (Flat::Line(l), Flat::Line(m)) => lines_intersect(&[l], &[m]),
        (Flat::Line(l), Flat::Polygon(rs)) | (Flat::Polygon(rs), Flat::Line(l)) => {
            line_in_poly(rs, l)?
        }
        (Flat::Polygon(r1), Flat::Polygon(r2)) => {
            let outer = |rs: &[Vec<Pt>]| rs.first().cloned().unwrap_or_default();
            let mut hit = false;
            for p in outer(r1) {
                hit |= pip(p, r2)?;
            }
            if !hit {
                for p in outer(r2) {
                    hit |= pip(p, r1)?;
                }
            }
            if !hit {
                let a: Vec<&[Pt]> = r1.iter().map(Vec::as_slice).collect();
                let b: Vec<&[Pt]> = r2.iter().map(Vec::as_slice).collect();
                hit = lines_intersect(&a, &b);
            }
            hit
        }
    })
}

/// turf's `booleanDisjoint`: every pair of flattened parts disjoint.
fn disjoint(a: &Value, b: &Value) -> R<bool> {
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    flatten(a, &mut fa, 0)?;
    flatten(b, &mut fb, 0)?;
    for x in &fa {
        for y in &fb {
            if !disjoint_one(x, y)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// turf's `cleanLine` (clean-coords): repeated positions and collinear middles removed.
fn clean_line(points: &[Value]) -> R<Vec<Value>> {
    let p: Vec<Pt> = line_of(points)?;
    if p.len() == 2 && p[0] != p[1] {
        return Ok(points.to_vec());
    }
    if p.is_empty() {
        return Err(Thrown);
    }
    let mut keep: Vec<usize> = vec![0];
    for i in 1..p.len().saturating_sub(1) {
        if p[i] == p[*keep.last().ok_or(Thrown)?] {
            continue;
        }
        keep.push(i);
        let n = keep.len();
        if n > 2 && on_segment(p[keep[n - 3]], p[keep[n - 1]], p[keep[n - 2]], Ends::Keep) {
            keep.remove(n - 2);
        }
    }
    keep.push(p.len() - 1);
    let n = keep.len();
    if p[0] == p[p.len() - 1] && n < 4 {
        return Err(Thrown);
    }
    if n < 3 {
        return Err(Thrown);
    }
    if on_segment(p[keep[n - 3]], p[keep[n - 1]], p[keep[n - 2]], Ends::Keep) {
        keep.remove(n - 2);
    }
    Ok(keep.into_iter().map(|i| points[i].clone()).collect())
}

fn array(v: &Value) -> R<&[Value]> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(Thrown),
    }
}

/// turf's `cleanCoords` of a geometry or feature.
fn clean(v: &Value) -> R<Value> {
    let g = geom(v)?;
    let t = kind(g).ok_or(Thrown)?;
    let c = coords(g)?;
    let cleaned = match t {
        "Point" => return Ok(v.clone()),
        "LineString" => clean_line(c)?,
        "MultiLineString" | "Polygon" => c
            .iter()
            .map(|l| Ok(Value::Array(clean_line(array(l)?)?)))
            .collect::<R<_>>()?,
        "MultiPolygon" => c
            .iter()
            .map(|p| {
                Ok(Value::Array(
                    array(p)?
                        .iter()
                        .map(|r| Ok(Value::Array(clean_line(array(r)?)?)))
                        .collect::<R<_>>()?,
                ))
            })
            .collect::<R<_>>()?,
        "MultiPoint" => {
            let mut seen: Vec<&Value> = Vec::new();
            for p in c {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            seen.into_iter().cloned().collect()
        }
        _ => return Err(Thrown),
    };
    let mut geometry = Object::new();
    geometry.insert("type", Value::String(t.to_string()));
    geometry.insert("coordinates", Value::Array(cleaned));
    if v.get("coordinates").is_some() {
        return Ok(Value::Object(geometry));
    }
    let mut f = Object::new();
    f.insert("type", Value::String("Feature".into()));
    if let Some(id) = v.get("id").filter(|i| !matches!(i, Value::Null)) {
        f.insert("id", id.clone());
    }
    if let Some(b) = v.get("bbox").filter(|b| !matches!(b, Value::Null)) {
        f.insert("bbox", b.clone());
    }
    f.insert(
        "properties",
        match v.get("properties") {
            None | Some(Value::Null) => Value::Object(Object::new()),
            Some(p) => p.clone(),
        },
    );
    f.insert("geometry", Value::Object(geometry));
    Ok(Value::Object(f))
}

/// JavaScript's `x.toFixed(6)` closely enough to compare positions (geojson-equality).
fn fixed(v: &Value) -> R<String> {
    as_num(v).map(|x| format!("{x:.6}")).ok_or(Thrown)
}

fn same_coord(a: &Value, b: &Value) -> R<bool> {
    let (a, b) = (array(a)?, array(b)?);
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter().zip(b) {
        if fixed(x)? != fixed(y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_path(p1: &[Value], p2: &[Value]) -> R<bool> {
    for (i, c) in p1.iter().enumerate() {
        if !same_coord(c, p2.get(i).ok_or(Thrown)?)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// geojson-equality's `compareLine` (`ind` 0 for lines, 1 for rings, which may start anywhere).
fn same_line(p1: &[Value], p2: &[Value], ind: usize, ring: bool) -> R<bool> {
    if p1.len() != p2.len() {
        return Ok(false);
    }
    let mut p2 = p2.to_vec();
    if ring && !same_coord(p1.first().ok_or(Thrown)?, p2.first().ok_or(Thrown)?)? {
        let mut at = None;
        for (i, c) in p2.iter().enumerate() {
            if same_coord(c, &p1[0])? {
                at = Some(i);
                break;
            }
        }
        let Some(i) = at else { return Ok(false) };
        p2 = p2[i..].iter().chain(&p2[1..=i]).cloned().collect();
    }
    let get = |p: &[Value], i: usize| p.get(i).cloned().ok_or(Thrown);
    if same_coord(&get(p1, ind)?, &get(&p2, ind)?)? {
        return same_path(p1, &p2);
    }
    if same_coord(&get(p1, ind)?, &get(&p2, p2.len().wrapping_sub(1 + ind))?)? {
        let rev: Vec<Value> = p1.iter().rev().cloned().collect();
        return same_path(&rev, &p2);
    }
    Ok(false)
}

/// A strict deep equality, numbers by value (deep-equal's `strict`).
fn deep_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| deep_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| deep_equal(v, w)))
        }
        _ => match (as_num(a), as_num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// geojson-equality's `compare` at precision 6.
fn equal(g1: &Value, g2: &Value, depth: u32) -> R<bool> {
    if depth > 64 {
        return Err(Thrown);
    }
    let t = kind(g1).ok_or(Thrown)?;
    if Some(t) != kind(g2) {
        return Ok(false);
    }
    fn c(g: &Value) -> R<Option<&[Value]>> {
        g.get("coordinates").map(array).transpose()
    }
    if let (Some(a), b) = (c(g1)?, c(g2)?) {
        if a.len() != b.ok_or(Thrown)?.len() {
            return Ok(false);
        }
    }
    match t {
        "Point" => same_coord(
            g1.get("coordinates").ok_or(Thrown)?,
            g2.get("coordinates").ok_or(Thrown)?,
        ),
        "LineString" => same_line(coords(g1)?, coords(g2)?, 0, false),
        "Polygon" => {
            let (r1, r2) = (coords(g1)?, coords(g2)?);
            let (Some(o1), Some(o2)) = (r1.first(), r2.first()) else {
                return Ok(true);
            };
            if !same_line(array(o1)?, array(o2)?, 1, true)? {
                return Ok(false);
            }
            for h1 in &r1[1..] {
                let mut found = false;
                for h2 in &r2[1..] {
                    if same_line(array(h1)?, array(h2)?, 1, true)? {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "Feature" => {
            let field = |g: &Value, k: &str| g.get(k).cloned().unwrap_or(Value::Null);
            if !deep_equal(&field(g1, "id"), &field(g2, "id"))
                || !deep_equal(&field(g1, "properties"), &field(g2, "properties"))
            {
                return Ok(false);
            }
            match (g1.get("bbox"), g2.get("bbox")) {
                (None, None) => {}
                (Some(a), Some(b)) if same_coord(a, b)? => {}
                _ => return Ok(false),
            }
            equal(
                g1.get("geometry").ok_or(Thrown)?,
                g2.get("geometry").ok_or(Thrown)?,
                depth + 1,
            )
        }
        multi if multi.starts_with("Multi") => {
            let single = Value::String(multi["Multi".len()..].to_string());
            let parts = |g: &Value| -> R<Vec<Value>> {
                Ok(coords(g)?
                    .iter()
                    .map(|c| {
                        let mut o = Object::new();
                        o.insert("type", single.clone());
                        o.insert("coordinates", c.clone());
                        Value::Object(o)
                    })
                    .collect())
            };
            let (p1, p2) = (parts(g1)?, parts(g2)?);
            for a in &p1 {
                let mut found = false;
                for b in &p2 {
                    if equal(a, b, depth + 1)? {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// turf's `booleanEqual`.
fn boolean_equal(a: &Value, b: &Value) -> R<bool> {
    if kind(geom(a)?) != kind(geom(b)?) {
        return Ok(false);
    }
    equal(&clean(a)?, &clean(b)?, 0)
}

/// Polygon or MultiPolygon coordinates as geo's multipolygon.
fn to_geo(g: &Value) -> R<geo::MultiPolygon<f64>> {
    let polygon = |rings: &[Value]| -> R<geo::Polygon<f64>> {
        let mut rs = lines(rings)?.into_iter().map(|r| {
            geo::LineString::from(
                r.into_iter()
                    .map(|(x, y)| geo::coord! {x: x, y: y})
                    .collect::<Vec<_>>(),
            )
        });
        let outer = rs.next().ok_or(Thrown)?;
        Ok(geo::Polygon::new(outer, rs.collect()))
    };
    let c = coords(g)?;
    match kind(g) {
        Some("Polygon") => Ok(geo::MultiPolygon(vec![polygon(c)?])),
        Some("MultiPolygon") => Ok(geo::MultiPolygon(
            c.iter().map(|p| polygon(array(p)?)).collect::<R<_>>()?,
        )),
        _ => Err(Thrown),
    }
}

/// A ring as polygon-clipping writes it: collinear points dropped, starting at its lowest
/// position (x, then y), counter-clockwise for an outer ring, clockwise for a hole; positions
/// equal (within a millionth of the coordinates' scale) to an input position are given back
/// exactly as they came in.
fn out_ring(ring: &geo::LineString<f64>, outer: bool, inputs: &[Pt]) -> Vec<Pt> {
    let snap = |p: Pt| {
        let tol = 1e-9 * (1.0 + p.0.abs().max(p.1.abs()));
        inputs
            .iter()
            .copied()
            .find(|q| (q.0 - p.0).abs() <= tol && (q.1 - p.1).abs() <= tol)
            .unwrap_or(p)
    };
    let mut ps: Vec<Pt> = ring.0.iter().map(|c| snap((c.x, c.y))).collect();
    if ps.len() > 1 && ps.first() == ps.last() {
        ps.pop();
    }
    ps.dedup();
    // Drop collinear middles until none is left.
    loop {
        let n = ps.len();
        if n < 3 {
            break;
        }
        let at = (0..n).find(|&i| {
            let (a, b, c) = (ps[(i + n - 1) % n], ps[i], ps[(i + 1) % n]);
            (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0) == 0.0
        });
        match at {
            Some(i) => {
                ps.remove(i);
            }
            None => break,
        }
    }
    let signed: f64 = (0..ps.len())
        .map(|i| {
            let (a, b) = (ps[i], ps[(i + 1) % ps.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    if (signed > 0.0) != outer {
        ps.reverse();
    }
    if let Some(start) = (0..ps.len()).min_by(|&i, &j| {
        ps[i]
            .0
            .total_cmp(&ps[j].0)
            .then(ps[i].1.total_cmp(&ps[j].1))
    }) {
        ps.rotate_left(start);
    }
    if let Some(&first) = ps.first() {
        ps.push(first);
    }
    ps
}

/// turf's `difference`: the first polygon minus the second, a Polygon or MultiPolygon feature
/// with the first one's properties; NULL when nothing is left.
fn difference(a: &Value, b: &Value) -> R<Value> {
    let (g1, g2) = (geom(a)?, geom(b)?);
    let (m1, m2) = (to_geo(g1)?, to_geo(g2)?);
    let mut inputs: Vec<Pt> = Vec::new();
    for m in [&m1, &m2] {
        for p in &m.0 {
            for r in std::iter::once(p.exterior()).chain(p.interiors()) {
                inputs.extend(r.0.iter().map(|c| (c.x, c.y)));
            }
        }
    }
    let out = m1.difference(&m2);
    let mut polys: Vec<Vec<Vec<Pt>>> = out
        .0
        .iter()
        .map(|p| {
            let mut holes: Vec<Vec<Pt>> = p
                .interiors()
                .iter()
                .map(|h| out_ring(h, false, &inputs))
                .filter(|r| r.len() >= 4)
                .collect();
            holes.sort_by(|x, y| x[0].0.total_cmp(&y[0].0).then(x[0].1.total_cmp(&y[0].1)));
            let mut rings = vec![out_ring(p.exterior(), true, &inputs)];
            rings.extend(holes);
            rings
        })
        .filter(|rs| rs[0].len() >= 4)
        .collect();
    polys.sort_by(|x, y| {
        x[0][0]
            .0
            .total_cmp(&y[0][0].0)
            .then(x[0][0].1.total_cmp(&y[0][0].1))
    });
    let ring_value = |r: &Vec<Pt>| {
        Value::Array(
            r.iter()
                .map(|p| Value::Array(vec![super::eval::num(p.0), super::eval::num(p.1)]))
                .collect(),
        )
    };
    let poly_value = |rs: &Vec<Vec<Pt>>| Value::Array(rs.iter().map(ring_value).collect());
    let (t, c) = match polys.len() {
        0 => return Ok(Value::Null),
        1 => ("Polygon", poly_value(&polys[0])),
        _ => (
            "MultiPolygon",
            Value::Array(polys.iter().map(poly_value).collect()),
        ),
    };
    Ok(feature(t, c, a.get("properties")))
}

fn feature(t: &str, coordinates: Value, properties: Option<&Value>) -> Value {
    let mut geometry = Object::new();
    geometry.insert("type", Value::String(t.to_string()));
    geometry.insert("coordinates", coordinates);
    let mut f = Object::new();
    f.insert("type", Value::String("Feature".into()));
    f.insert(
        "properties",
        match properties {
            None | Some(Value::Null) => Value::Object(Object::new()),
            Some(p) => p.clone(),
        },
    );
    f.insert("geometry", Value::Object(geometry));
    Value::Object(f)
}

/// turf's `circle` (64 steps of `destination`), JavaScript's math functions via `libm`.
fn circle(center: &Value, radius: f64, factor: f64) -> R<Value> {
    let (lon, lat) = get_coord(center)?;
    let deg2rad = |d: f64| (d % 360.0) * std::f64::consts::PI / 180.0;
    let rad2deg = |r: f64| (r % (2.0 * std::f64::consts::PI)) * 180.0 / std::f64::consts::PI;
    let (lon1, lat1) = (deg2rad(lon), deg2rad(lat));
    let r = radius / factor;
    let steps = 64;
    let mut ring: Vec<Value> = (0..steps)
        .map(|i| {
            let bearing = deg2rad(f64::from(i) * -360.0 / f64::from(steps));
            let lat2 = libm::asin(
                libm::sin(lat1) * libm::cos(r)
                    + libm::cos(lat1) * libm::sin(r) * libm::cos(bearing),
            );
            let lon2 = lon1
                + libm::atan2(
                    libm::sin(bearing) * libm::sin(r) * libm::cos(lat1),
                    libm::cos(r) - libm::sin(lat1) * libm::sin(lat2),
                );
            Value::Array(vec![
                super::eval::num(rad2deg(lon2)),
                super::eval::num(rad2deg(lat2)),
            ])
        })
        .collect();
    ring.push(ring[0].clone());
    let properties = match center {
        Value::Object(_) if kind(center) == Some("Feature") => center.get("properties"),
        _ => None,
    };
    Ok(feature(
        "Polygon",
        Value::Array(vec![Value::Array(ring)]),
        properties,
    ))
}

/// HarperDB's wrapper: an empty argument, or a geometry whose `coordinates` holds a null, is
/// false before turf runs; a text argument is parsed as JSON.
fn two(args: &[Value]) -> Option<(Value, Value)> {
    let arg = |i: usize| -> Option<Value> {
        let v = args.get(i)?;
        if let Some(Value::Array(c)) = v.get("coordinates") {
            if c.iter().any(|x| matches!(x, Value::Null)) {
                return None;
            }
        }
        super::geo::geojson(v)
    };
    Some((arg(0)?, arg(1)?))
}

/// A predicate or shape function by (upper-case) name; `None` for the others. `factor` gives
/// units' factor (turf's `factors`) or the error for an unknown unit.
pub fn call(
    name: &str,
    args: &[Value],
    factor: impl Fn(usize) -> Result<f64, super::SqlError>,
) -> Option<Result<Value, super::SqlError>> {
    let predicate = |f: fn(&Value, &Value) -> R<bool>| {
        Ok(Value::Bool(
            two(args).is_some_and(|(a, b)| f(&a, &b).unwrap_or(false)),
        ))
    };
    Some(match name {
        "GEOCONTAINS" => predicate(contains),
        "GEOEQUAL" => predicate(boolean_equal),
        "GEOCROSSES" => predicate(|a, b| disjoint(a, b).map(|d| !d)),
        "GEODIFFERENCE" => Ok(two(args)
            .and_then(|(a, b)| difference(&a, &b).ok())
            .unwrap_or(Value::Null)),
        "GEOCIRCLE" => {
            let center = args.first().and_then(super::geo::geojson);
            let radius = args
                .get(1)
                .filter(|r| !matches!(r, Value::Null))
                .and_then(as_f64);
            match (center, radius) {
                (Some(c), Some(r)) => factor(2).map(|f| circle(&c, r, f).unwrap_or(Value::Null)),
                _ => Ok(Value::Null),
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::json;

    fn poly(coords: &str) -> Value {
        json::parse(format!(r#"{{"type":"Polygon","coordinates":{coords}}}"#).as_bytes())
            .expect("polygon")
    }

    /// Odd polygons give an answer or nothing, never a panic (a panic would end the server).
    #[test]
    fn odd_polygons_do_not_panic() {
        let odd = [
            "[]",
            "[[]]",
            "[[[0,0]]]",
            "[[[0,0],[0,0],[0,0],[0,0]]]",
            "[[[0,0],[1,1],[1,0],[0,1],[0,0]]]",
            "[[[0,0],[1e308,0],[1e308,1e308],[0,0]]]",
            "[[[-1e308,-1e308],[1e308,-1e308],[1e308,1e308],[-1e308,1e308],[-1e308,-1e308]]]",
            "[[[0,0],[5e-324,0],[5e-324,5e-324],[0,0]]]",
            "[[[0,0],[2,0],[2,2],[0,2],[0,0]],[[0,0],[2,0],[2,2],[0,2],[0,0]]]",
        ];
        let square = poly("[[[0,0],[2,0],[2,2],[0,2],[0,0]]]");
        for a in odd {
            let p = poly(a);
            let _ = difference(&p, &square);
            let _ = difference(&square, &p);
            let _ = difference(&p, &p);
            let _ = contains(&p, &square);
            let _ = disjoint(&p, &square);
            let _ = boolean_equal(&p, &square);
        }
    }
}
